"""The trainable-parameter counts (`python -m tljax.methods`, `Adaptation.count`) against counts taken without
our rules: PyTorch PEFT's `get_nb_trainable_parameters()` where PEFT has the method (LoRA, prefix, prompt and
P-tuning, with the task head as PEFT's `modules_to_save`), and a PyTorch `transformers` model whose parameters
are chosen by name, by hand, for the others (full, partial, BitFit, gradual unfreezing), or counted from the
papers' formulas (the bottleneck adapters). The models are tiny random ones saved by PyTorch."""

import peft
import pytest
import torch
import transformers
from flax import nnx

from tljax.methods import Adaptation, adapt, make_method
from tljax.methods.__main__ import _class_and_config, trainable_table

HIDDEN, LAYERS, LABELS = 32, 2, 3
BERT = dict(vocab_size=211, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, num_labels=LABELS)
LLAMA = dict(vocab_size=173, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128, pad_token_id=0,
             num_labels=LABELS)
# The task head: the classifier, and for BERT the pooler (dense weight [H, H] and bias [H]) before it, which
# the pre-trained checkpoint did not train for the task, so it trains with the classifier under every method.
HEAD = {"bert": ("classifier.", "bert.pooler."), "llama": ("score.",)}
POOLER = HIDDEN * HIDDEN + HIDDEN
# what PEFT must keep trainable beside its own parameters: the same head
MODULES_TO_SAVE = {"bert": ["classifier", "pooler"], "llama": ["score"]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{family: the directory of a tiny random sequence classifier saved by PyTorch transformers}."""
    directories = {}
    for family, config, cls in (("bert", transformers.BertConfig(**BERT), transformers.BertForSequenceClassification),
                                ("llama", transformers.LlamaConfig(**LLAMA),
                                 transformers.LlamaForSequenceClassification)):
        torch.manual_seed(0)
        directories[family] = tmp_path_factory.mktemp(family)
        cls(config).save_pretrained(directories[family])
    return directories


def torch_model(directory, **config) -> torch.nn.Module:
    return transformers.AutoModelForSequenceClassification.from_pretrained(directory, **config)


def by_name(model: torch.nn.Module, trains) -> int:
    """Sets `requires_grad` from `trains(name)` on every parameter and sums the trainable ones' sizes."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(bool(trains(name)))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def head(family: str, name: str) -> bool:
    return name.startswith(HEAD[family])


def ours(directory, name: str, options: dict | None = None, step: int = 0) -> int:
    """Our count: the method's rules over the model built from the saved config.json (no weights computed)."""
    cls, config = _class_and_config(directory, "sequence-classification", LABELS)
    method = make_method(name, options)
    model = nnx.eval_shape(lambda: adapt(cls.from_config(config), [method]).model)
    return Adaptation(model, (method,)).count(step)[0]


def peft_count(directory, family: str, config: peft.PeftConfig) -> int:
    model = peft.get_peft_model(torch_model(directory), config)
    return model.get_nb_trainable_parameters()[0]


def prefix_embedding_difference(family: str, tokens: int, projection: int) -> int:
    """What our prefix re-parameterisation holds beyond PEFT's: PEFT's embedding is as wide as one layer's keys
    (kv_heads * head_dim: for a grouped-query model, narrower than the hidden size), ours as wide as the hidden
    size, in the embedding [P, width] and the first projection's kernel [width, projection]. Both compute the
    same kind of table [P, layers * 2 * kv_heads * head_dim] (and the export keeps only the table)."""
    config = BERT if family == "bert" else LLAMA
    kv_heads = config.get("num_key_value_heads", config["num_attention_heads"])
    key_width = kv_heads * config["hidden_size"] // config["num_attention_heads"]
    return (config["hidden_size"] - key_width) * (tokens + projection)


def layer_of(name: str) -> int | None:
    """The layer index of a transformers parameter name (bert.encoder.layer.1..., model.layers.0...)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layer", "layers") and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_the_methods_table_counts_what_pytorch_counts(saved, family):
    """Every method at its defaults, as `python -m tljax.methods` shows it."""
    directory = saved[family]
    table = {name: count for name, count, _ in trainable_table(directory, num_labels=LABELS)}
    embeddings = "embeddings." if family == "bert" else "embed_tokens."
    total = sum(p.numel() for p in torch_model(directory).parameters())
    task = "SEQ_CLS"
    expected = {
        "full": total,
        "feature-extraction": by_name(torch_model(directory), lambda n: head(family, n)),
        "partial": by_name(torch_model(directory), lambda n: embeddings not in n),  # embeddings frozen
        # step 0: the head only (layers unfreeze from the top later, see below)
        "gradual-unfreezing": by_name(torch_model(directory), lambda n: head(family, n)),
        # every bias of the backbone (Llama's zero-initialised ones: a model built with them) and the head
        "bitfit": by_name(torch_model(directory, attention_bias=True, mlp_bias=True) if family == "llama" else
                          torch_model(directory), lambda n: n.endswith(".bias") or head(family, n)),
        "lora": peft_count(directory, family, peft.LoraConfig(
            task_type=task, r=8, lora_alpha=16, target_modules=["query", "value"] if family == "bert" else
            ["q_proj", "v_proj"], modules_to_save=list(MODULES_TO_SAVE[family]))),
        "prefix": peft_count(directory, family, peft.PrefixTuningConfig(
            task_type=task, num_virtual_tokens=20, modules_to_save=list(MODULES_TO_SAVE[family]))),
        "prompt": peft_count(directory, family, peft.PromptTuningConfig(
            task_type=task, num_virtual_tokens=20, modules_to_save=list(MODULES_TO_SAVE[family]))),
        "p-tuning": peft_count(directory, family, peft.PromptEncoderConfig(
            task_type=task, num_virtual_tokens=20, encoder_hidden_size=HIDDEN, encoder_reparameterization_type="MLP",
            modules_to_save=list(MODULES_TO_SAVE[family]))),
    }
    head_size = expected["feature-extraction"]
    assert head_size == HIDDEN * LABELS + (LABELS + POOLER if family == "bert" else 0)
    # Bottleneck adapters (Houlsby et al. 2019, Pfeiffer et al. 2020): down [h, r] + bias r, up [r, h] + bias h,
    # r = h / 16; Houlsby: two per layer and the layer norms train too; Pfeiffer: one per layer
    r = HIDDEN // 16
    adapter = HIDDEN * r + r + r * HIDDEN + HIDDEN
    norms = "LayerNorm." if family == "bert" else "layernorm."
    expected["houlsby"] = LAYERS * 2 * adapter + by_name(torch_model(directory), lambda n: norms in n) + head_size
    expected["pfeiffer"] = LAYERS * adapter + head_size
    assert table == expected


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_partial_and_gradual_unfreezing_count_the_layers_pytorch_counts(saved, family):
    directory = saved[family]
    embeddings = "embeddings." if family == "bert" else "embed_tokens."
    above = "bert.pooler." if family == "bert" else "model.norm."  # above every layer: unfreezes with the top one
    bottom_frozen = by_name(torch_model(directory),
                            lambda n: embeddings not in n and layer_of(n) != 0)
    assert ours(directory, "partial", {"freeze_layers": 1}) == bottom_frozen
    every = 10
    for step in (0, 9, 10, 20, 29, 30, 1000):
        unfrozen = step // every  # layers from the top, then the embeddings
        expected = by_name(torch_model(directory), lambda n: (
            head(family, n) or (layer_of(n) is not None and layer_of(n) >= LAYERS - unfrozen)
            or (n.startswith(above) and unfrozen > 0) or (embeddings in n and unfrozen > LAYERS)))
        assert ours(directory, "gradual-unfreezing", {"every": every}, step) == expected, step


def test_lora_on_every_projection_and_an_lstm_prompt_encoder_count_as_pytorch_counts(saved):
    directory = saved["bert"]
    # every projection of every layer: query, key, value, the attention output, the intermediate and the output
    lora = ours(directory, "lora", {"rank": 4, "target_pattern": r"layer/\d+/.*(query|key|value|dense)$"})
    assert lora == peft_count(directory, "bert", peft.LoraConfig(
        task_type="SEQ_CLS", r=4, target_modules=r".*layer\.\d+\..*(query|key|value|dense)",
        modules_to_save=list(MODULES_TO_SAVE["bert"])))
    # PyTorch's LSTM holds two bias vectors per direction and layer (b_ih and b_hh, [4 * hidden] each), whose
    # sum is the one bias vector ours holds: 2 layers x 2 directions x 4 * hidden fewer, computing the same
    lstm = peft_count(directory, "bert", peft.PromptEncoderConfig(
        task_type="SEQ_CLS", num_virtual_tokens=8, encoder_hidden_size=16, encoder_reparameterization_type="LSTM",
        modules_to_save=list(MODULES_TO_SAVE["bert"])))
    assert ours(directory, "p-tuning", {"num_virtual_tokens": 8, "encoder": "lstm",
                                        "encoder_hidden_size": 16}) == lstm - 2 * 2 * 4 * 16
