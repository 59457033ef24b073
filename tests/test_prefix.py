"""Prefix tuning: the same gradients as PyTorch PEFT, and steps whose size the learning rate bounds."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from benchmarks.prefix_study import first_step
from conftest import padded_batch
from tljax.methods import MethodError, PrefixTuning, adapt, make_method
from tljax.methods.prefix import prefix_encoder
from tljax.models import BertForSequenceClassification
from tljax.train.config import load_config
from tljax.train.losses import classification_loss
from tljax.train.optim import OptimizerConfig, build_optimizer
from tljax.train.step import make_train_step, split

BERT = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2)
LABELS = {0: "negative", 1: "positive"}
CONFIG = Path(__file__).parents[1] / "configs" / "prefix.yaml"


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("bert") / "bert"
    transformers.BertModel(transformers.BertConfig(**BERT)).save_pretrained(directory)
    return directory


def batch():
    ids, mask = padded_batch(np.random.RandomState(1), BERT["vocab_size"], [9, 4, 7, 1])
    return {"input_ids": ids, "attention_mask": mask, "labels": np.array([0, 1, 1, 0], np.int32)}


@pytest.mark.parametrize("projection", [None, 16], ids=["table", "projected"])
def test_first_step_loss_and_gradients_match_peft(bert_dir, projection):
    model = BertForSequenceClassification.from_pretrained(bert_dir, id2label=LABELS)
    adaptation = adapt(model, [PrefixTuning(num_virtual_tokens=3, projection_size=projection)])
    ours, theirs, gradients = first_step(adaptation, bert_dir, batch(), 2)
    # the prefix (its table, or its embedding and MLP) and the head: classifier and pooler
    assert {"prefix/encoder/embedding", "classifier/kernel", "bert/pooler/dense/kernel"} <= gradients.keys()
    assert ("prefix/encoder/mlp_out/kernel" in gradients) is (projection is not None)
    # Both sides compute in float32 (epsilon 1.2e-7) with sums in different orders; a relative difference of
    # 1e-4 leaves room for rounding amplified by the ~10 layers of products between the loss and a prefix
    # (measured: about 1e-6 on MiniLM-L6), while a different mask, position or layout moves the gradient by
    # tens of percent.
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    for name, (a, b) in gradients.items():
        assert np.linalg.norm(b) > 0, name
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b), name


def test_an_adam_step_at_the_configs_rate_moves_no_prefix_value_by_more_than_that_rate(bert_dir):
    """configs/prefix.yaml's method and rate: Adam's first step moves each parameter by at most the rate (its
    update is m / sqrt(v) = g / |g|, plus weight decay). A trained table is then what the attention reads; a
    re-parameterisation MLP instead moves each key by the rate times the sum over its hidden units, and at the
    rate prefixes need the keys outgrew the real tokens' in a few dozen steps and every input was classified
    alike (benchmarks/prefix_study.py)."""
    config = load_config(CONFIG)
    tc = config.training
    options = {k: v for k, v in config.method.items() if k != "name"}
    model = BertForSequenceClassification.from_pretrained(bert_dir, id2label=LABELS)
    adaptation = adapt(model, [make_method("prefix", options)])
    before = np.asarray(prefix_encoder(adaptation.model).table())
    rate = tc.new_learning_rate or tc.learning_rate
    tx = build_optimizer(OptimizerConfig(learning_rate=tc.learning_rate, new_learning_rate=tc.new_learning_rate,
                                         weight_decay=tc.weight_decay, lr_scheduler_type="constant",
                                         max_grad_norm=tc.max_grad_norm), 1, adaptation.new_parameter_rules())
    graphdef, trainable, frozen = split(adaptation.model, adaptation.trainable())
    step = make_train_step(graphdef, classification_loss, tx)
    trainable, _, _ = step(trainable, frozen, tx.init(trainable), {k: jnp.asarray(v) for k, v in batch().items()},
                           None)
    after = np.asarray(prefix_encoder(nnx.merge(graphdef, trainable, frozen)).table())
    moved = np.abs(after - before).max()
    # AdamW's first update of a parameter w: rate * (g / (|g| + eps) + weight_decay * w); float32 slack 1e-6
    bound = rate * (1 + tc.weight_decay * np.abs(before).max()) + 1e-6
    assert 0 < moved <= bound, f"a prefix value moved by {moved:.3g} in one step at rate {rate}"


def test_a_projection_size_below_one_is_refused(bert_dir):
    model = BertForSequenceClassification.from_pretrained(bert_dir, id2label=LABELS)
    with pytest.raises(MethodError, match="projection_size must be at least 1 .*got 0"):
        adapt(model, [PrefixTuning(projection_size=0)])
