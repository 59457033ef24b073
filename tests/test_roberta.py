"""The RoBERTa family (RoBERTa, XLM-RoBERTa) against the PyTorch reference (`transformers`, `peft`) on tiny random
configs: every head on a padded batch, saving both ways, config refusals, PEFT exports, where the methods put
their parameters."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

from conftest import padded_batch
from tljax.methods import Adaptation, Adapters, BitFit, LoRA, PrefixTuning, PromptTuning, adapt
from tljax.methods.peft import save_peft
from tljax.models import (
    ConfigError,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    from_pretrained,
    task_of,
)
from tljax.models.roberta.modeling import position_ids

PAD = 1
TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=40, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=PAD)
LABELS = {0: "neg", 1: "pos", 2: "mix"}
CLASSES = [
    (transformers.RobertaModel, RobertaModel),
    (transformers.RobertaForSequenceClassification, RobertaForSequenceClassification),
    (transformers.RobertaForTokenClassification, RobertaForTokenClassification),
    (transformers.RobertaForQuestionAnswering, RobertaForQuestionAnswering),
    (transformers.RobertaForMaskedLM, RobertaForMaskedLM),
]
forward = nnx.jit(lambda model, *args: model(*args))
with_states = nnx.jit(lambda model, *args: model(*args, output_hidden_states=True))


def batch(lengths=(9, 4, 1), left: bool = False, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [B, T] padded with RoBERTa's padding id (positions count the other tokens), and the mask."""
    ids, mask = padded_batch(np.random.RandomState(seed), TINY["vocab_size"], list(lengths), left=left)
    return np.where(mask == 1, ids, PAD), mask


def torch_output(model, ids, mask) -> np.ndarray:
    """The reference's last hidden state, logits, or span scores [..., 2] (start, end)."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if hasattr(out, "start_logits"):
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
    return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits).numpy()


def ours(model, ids, mask) -> np.ndarray:
    return np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny random RoBERTa masked LM saved by transformers (backbone `roberta.` and `lm_head.`): the checkpoint
    the heads start from and the base PEFT loads adapters onto. (directory, PyTorch model)."""
    directory = tmp_path_factory.mktemp("roberta-mlm")
    torch.manual_seed(0)
    reference = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**TINY)).eval()
    reference.save_pretrained(directory)
    return directory, reference


@pytest.mark.parametrize("torch_cls, cls", CLASSES, ids=lambda c: getattr(c, "__name__", ""))
def test_every_class_matches_pytorch_on_a_padded_batch(tmp_path, pretrained, torch_cls, cls):
    if torch_cls is transformers.RobertaForMaskedLM:
        directory, reference = pretrained
    else:
        torch.manual_seed(0)
        reference = torch_cls(transformers.RobertaConfig(**TINY, num_labels=3 if "Classif" in cls.__name__ else 2))
        reference.eval().save_pretrained(directory := tmp_path / "torch")
    model = from_pretrained(directory, task=task_of(cls))
    assert type(model) is cls
    ids, mask = batch()  # padded positions too: they are numbered and masked as in PyTorch
    if cls is RobertaModel:  # every layer's output, the embeddings' first, the last one the model's output
        with torch.no_grad():
            expected = reference(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
        last, states = with_states(model, jnp.asarray(ids), jnp.asarray(mask))
        assert len(states) == len(expected.hidden_states) == 3
        np.testing.assert_array_equal(last, states[-1])
        for a, b in zip(states, expected.hidden_states):
            np.testing.assert_allclose(a, b.numpy(), atol=1e-5, rtol=0)
        return
    np.testing.assert_allclose(ours(model, ids, mask), torch_output(reference, ids, mask), atol=1e-5, rtol=0)


def test_positions_are_numbered_as_transformers_numbers_them():
    embeddings = transformers.models.roberta.modeling_roberta.RobertaEmbeddings
    for left in (False, True):
        ids, _ = batch((7, 3, 5), left=left)
        for past in (0, 3):  # prefix-tuning keys before the text
            expected = embeddings.create_position_ids_from_input_ids(torch.tensor(ids), PAD, past).numpy()
            np.testing.assert_array_equal(position_ids(jnp.asarray(ids), PAD, 0, past), expected)
        # virtual tokens come as input embeddings: every position in order, padding included
        expected = embeddings.create_position_ids_from_inputs_embeds(torch.zeros(3, 4 + 7, 8), PAD).numpy()
        np.testing.assert_array_equal(position_ids(jnp.asarray(ids), PAD, 4, 3), expected)



def test_texts_are_cut_to_the_positions_after_the_padding_index():
    """40 position embeddings numbered from PAD + 1 read 38 tokens: a run's max_length is cut there (a longer
    input would index past the table, which JAX clamps without a word)."""
    from tljax.train.tasks import text_positions

    model = RobertaForSequenceClassification.from_config(RobertaConfig(**TINY, id2label={0: "neg", 1: "pos"}))
    assert model.config.max_text_positions == 38
    assert text_positions(adapt(model, [LoRA(rank=2)]), 512) == 38
    prompted = RobertaForSequenceClassification.from_config(RobertaConfig(**TINY, id2label={0: "neg", 1: "pos"}))
    assert text_positions(adapt(prompted, [PromptTuning(num_virtual_tokens=4)]), 512) == 34

def test_xlm_roberta_classifier_matches_pytorch_both_ways(tmp_path):
    torch.manual_seed(0)
    config = transformers.XLMRobertaConfig(**TINY, num_labels=3)
    reference = transformers.XLMRobertaForSequenceClassification(config).eval()
    reference.save_pretrained(tmp_path / "torch")
    model = from_pretrained(tmp_path / "torch", task="sequence-classification")
    assert type(model) is XLMRobertaForSequenceClassification and type(model.roberta).__name__ == "XLMRobertaModel"
    ids, mask = batch()
    expected = torch_output(reference, ids, mask)
    np.testing.assert_allclose(ours(model, ids, mask), expected, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["architectures"] == ["XLMRobertaForSequenceClassification"]
    assert written["model_type"] == "xlm-roberta" and "classifier_pooling" not in written
    again = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    assert type(again) is transformers.XLMRobertaForSequenceClassification
    np.testing.assert_allclose(torch_output(again, ids, mask), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("torch_cls, cls", [CLASSES[1], CLASSES[4]], ids=lambda c: getattr(c, "__name__", ""))
def test_our_save_loads_in_pytorch_and_back(tmp_path, torch_cls, cls):
    model = cls.from_config(RobertaConfig.from_hf({**TINY, "id2label": LABELS}), seed=3)
    model.save_pretrained(tmp_path)
    reference = transformers.AutoConfig.from_pretrained(tmp_path)
    assert reference.architectures == [cls.__name__]
    loaded = torch_cls.from_pretrained(tmp_path).eval()
    ids, mask = batch((7, 3))
    np.testing.assert_allclose(ours(model, ids, mask), torch_output(loaded, ids, mask), atol=1e-5, rtol=0)
    again = cls.from_pretrained(tmp_path)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(a, b)


def test_a_masked_lm_checkpoint_gets_a_fresh_head_and_feeds_it_as_the_whole_model_does(pretrained):
    directory, reference = pretrained
    model = RobertaForSequenceClassification.from_pretrained(directory, id2label=LABELS)
    assert model.classifier.out_proj.kernel.shape == (32, 3)
    assert 0.001 < float(jnp.std(model.classifier.dense.kernel[...])) < 0.1  # initialised, not zeros
    np.testing.assert_array_equal(np.asarray(model.roberta.encoder.layer[1].output.dense.kernel[...]),
                                  reference.roberta.encoder.layer[1].output.dense.weight.detach().numpy().T)
    whole, from_layer, dropped, from_features = head_paths(model, *map(jnp.asarray, batch()), jax.random.key(0))
    assert not np.allclose(dropped, whole)
    # the frozen-bottom path and the cached-features path (the backbone's features once, the head at each step)
    # compute what the whole model computes, with the same dropout masks
    np.testing.assert_allclose(from_layer, whole, atol=1e-5, rtol=0)
    np.testing.assert_allclose(from_features, dropped, atol=1e-6, rtol=0)


@nnx.jit
def head_paths(model, ids, mask, key):
    body_key, head_key = jax.random.split(key)
    return (model(ids, mask), model.logits_from_layer(model.roberta.hidden_before(ids, mask, 1), mask, 1),
            model(ids, mask, dropout_key=key),
            model.classify(model.features(ids, mask, dropout_key=body_key), dropout_key=head_key))


@pytest.mark.parametrize("changes, message", [
    ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key' is not supported"),
    ({"is_decoder": True}, "is_decoder=True is not supported"),
    ({"add_cross_attention": True}, "add_cross_attention=True is not supported"),
    ({"hidden_act": "swish"}, "hidden_act='swish' is not supported"),
    ({"rotary_dim": 8}, "rotary_dim=8 is not an attribute tljax implements"),
    ({"classifier_pooling": "mean"}, "classifier_pooling 'mean' is not supported for roberta"),
    ({"pad_token_id": 40}, "pad_token_id 40 must be a token id below"),
    ({"model_type": "xlm-roberta"}, "model_type 'xlm-roberta' is not 'roberta'"),
])
def test_configs_that_change_the_computation_are_refused(changes, message):
    raw = transformers.RobertaConfig(**TINY).to_dict() | changes
    with pytest.raises(ConfigError, match=message):
        RobertaConfig.from_hf(raw)


def test_published_configs_are_read():
    # XLM-RoBERTa's published config.json still says output_past (a transformers 2 flag of no effect)
    raw = transformers.XLMRobertaConfig(**TINY).to_dict() | {"output_past": True, "position_embedding_type": "absolute"}
    config = XLMRobertaConfig.from_hf(raw)
    assert config.pad_token_id == PAD and config.type_vocab_size == 1 and config.layer_norm_eps == 1e-5
    assert XLMRobertaConfig().vocab_size == transformers.XLMRobertaConfig().vocab_size  # defaults as Hugging Face's
    assert RobertaConfig().vocab_size == transformers.RobertaConfig().vocab_size
    with pytest.raises(ConfigError, match="classifier_pooling 'mean' is not supported"):
        config.replace(classifier_pooling="mean").validate()


def perturb(adaptation, seed: int = 0, scale: float = 0.2) -> None:
    """Noise on every trainable parameter (as training would), so none keeps its initial value."""
    rng = np.random.RandomState(seed)
    state = nnx.state(adaptation.model, adaptation.trainable())
    for _, variable in nnx.to_flat_state(state):
        value = variable.get_value()
        variable.set_value(value + jnp.asarray(scale * rng.randn(*value.shape), value.dtype))
    nnx.update(adaptation.model, state)


@pytest.mark.parametrize("method", [LoRA(rank=4, alpha=8.0), PromptTuning(num_virtual_tokens=4),
                                    PrefixTuning(num_virtual_tokens=3)], ids=["lora", "prompt", "prefix"])
def test_peft_exports_load_in_peft_with_equal_logits(tmp_path, pretrained, method):
    """Right- and left-padded rows: under a soft prompt PEFT passes input embeddings, and RoBERTa numbers every
    position in order (padding included), not by counting tokens."""
    directory, _ = pretrained
    adaptation = adapt(RobertaForSequenceClassification.from_pretrained(directory, id2label=LABELS), [method])
    perturb(adaptation)
    save_peft(adaptation, tmp_path / "adapter", base_model_name_or_path=str(directory))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["classifier"]
    head = "base_model.model.classifier" if method.name == "lora" else "base_model.classifier"
    assert tensors[f"{head}.dense.weight"].shape == (32, 32) and tensors[f"{head}.out_proj.weight"].shape == (3, 32)
    if method.name == "lora":
        assert config["target_modules"] == ["query", "value"]
        assert tensors["base_model.model.roberta.encoder.layer.1.attention.self.value.lora_B.weight"].shape == (32, 4)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(directory, num_labels=len(LABELS))
    reference = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    right, left = batch((9, 4, 1)), batch((9, 6, 2), left=True, seed=2)
    ids, mask = (np.concatenate(pair) for pair in zip(right, left))
    np.testing.assert_allclose(ours(adaptation.model, ids, mask), torch_output(reference, ids, mask), atol=1e-4,
                               rtol=0)


def test_methods_put_their_parameters_on_the_roberta_layers():
    config = RobertaConfig.from_hf({**TINY, "id2label": LABELS})

    def trained(method) -> set[str]:
        """The trainable parameters' paths (the model built abstractly, as `python -m tljax.methods` builds it)."""
        model = nnx.eval_shape(lambda: adapt(RobertaForSequenceClassification.from_config(config), [method]).model)
        return {path for path, _, rule in Adaptation(model, (method,)).rules().report(model) if rule.trainable}

    head = {f"classifier/{layer}/{leaf}" for layer in ("dense", "out_proj") for leaf in ("kernel", "bias")}
    assert trained(LoRA()) == head | {f"roberta/encoder/layer/{i}/attention/self/{name}/lora_{ab}"
                                      for i in (0, 1) for name in ("query", "value") for ab in "ab"}
    assert {p for p in trained(Adapters(kind="houlsby")) if "/adapter/" in p} == {
        f"roberta/encoder/layer/{i}/{where}/dense/adapter/{proj}/{leaf}" for i in (0, 1)
        for where in ("attention/output", "output") for proj in ("down", "up") for leaf in ("kernel", "bias")}
    assert trained(PrefixTuning(num_virtual_tokens=2)) - head == {
        "roberta/encoder/layer/0/attention/self/prefix/encoder/embedding"}  # one table, shared by the layers
    assert trained(PromptTuning(num_virtual_tokens=2)) - head == {"roberta/prompt/embedding"}
    biases = trained(BitFit()) - head
    assert biases and all(p.endswith("/bias") for p in biases)
    assert "roberta/embeddings/LayerNorm/bias" in biases and "roberta/encoder/layer/1/output/dense/bias" in biases


def test_the_methods_command_prints_the_trainable_table(pretrained, capsys):
    from tljax.methods.__main__ import main

    directory, _ = pretrained
    assert main([str(directory)]) == 0
    printed = capsys.readouterr().out
    # LoRA on query and value of 2 layers (rank 8), and the whole classifier head (dense 32 x 32, out_proj 32 x 2)
    lora = 2 * 2 * (32 * 8 + 8 * 32) + (32 * 32 + 32) + (32 * 2 + 2)
    assert f"| lora | {lora:,} |" in printed and "| prompt |" in printed and "| houlsby |" in printed


def test_partial_fine_tuning_computes_a_roberta_classifiers_frozen_bottom_once():
    """The cached frozen bottom (tljax.train.features) reads the backbone as the model's, positions after the
    padding index included."""
    from tljax.methods import PartialFineTuning
    from tljax.train.features import frozen_bottom

    config = RobertaConfig.from_hf({**TINY, "id2label": LABELS})
    adaptation = adapt(RobertaForSequenceClassification.from_config(config), [PartialFineTuning(freeze_layers=1)])
    assert frozen_bottom(adaptation) == 1
    ids, mask = batch()
    body = adaptation.model.roberta
    _, states = body(jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True)
    np.testing.assert_allclose(np.asarray(body.hidden_before(jnp.asarray(ids), jnp.asarray(mask), 1)),
                               np.asarray(states[1]), atol=1e-6)


def test_a_multi_task_run_gives_each_task_its_own_output_layer_after_robertas_shared_dense():
    from tljax.train.multitask import TaskHeads, single_task_head

    config = RobertaConfig.from_hf({**TINY, "id2label": LABELS})
    model = adapt(RobertaForSequenceClassification.from_config(config), [LoRA(), TaskHeads(tasks=(("a", 3), ("b", 2)))]).model
    assert single_task_head(model) is model.classifier.out_proj
    ids, mask = batch()
    features = model.pool(model.features(jnp.asarray(ids), jnp.asarray(mask)))  # what the task heads read
    assert {name: head(features).shape for name, head in model.task_heads.items()} == {"a": (3, 3), "b": (3, 2)}
