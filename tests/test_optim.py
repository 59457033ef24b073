"""The optimiser: decay mask, schedule, clipping, accumulation, and a learning rate for new parameters."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tljax.methods.rules import PathRules, Rule
from tljax.models.decoder.modeling import LLAMA_LAYOUT
from tljax.models.encoder.modeling import BERT_LAYOUT
from tljax.train.optim import OptimizerConfig, build_optimizer, schedule

PARAMS = {
    "encoder": {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))},
                "LayerNorm": {"scale": jnp.ones((2,)), "bias": jnp.ones((2,))}},
    "classifier": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
}


def update(tx, grads, state, params):
    with jax.numpy_dtype_promotion("standard"):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state


def test_weight_decay_skips_biases_and_norm_scales():
    tx = build_optimizer(OptimizerConfig(learning_rate=0.1, weight_decay=0.5, lr_scheduler_type="constant",
                                         no_decay=BERT_LAYOUT.no_decay), 10)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    new, _ = update(tx, zeros, tx.init(PARAMS), PARAMS)
    assert float(new["encoder"]["dense"]["kernel"][0, 0]) == pytest.approx(1 - 0.1 * 0.5)
    assert float(new["classifier"]["kernel"][0, 0]) == pytest.approx(0.95)
    for unchanged in (new["encoder"]["dense"]["bias"], new["encoder"]["LayerNorm"]["scale"],
                      new["encoder"]["LayerNorm"]["bias"], new["classifier"]["bias"]):
        np.testing.assert_array_equal(unchanged, 1.0)



def test_each_family_states_what_weight_decay_leaves_alone():
    decayed = {layout: [p for p in paths if not re.search(layout.no_decay, p)] for layout, paths in {
        BERT_LAYOUT: ["bert/embeddings/LayerNorm/scale", "bert/encoder/layer/0/output/LayerNorm/bias",
                      "bert/encoder/layer/0/attention/self/query/bias", "bert/encoder/layer/0/attention/self/query/kernel"],
        LLAMA_LAYOUT: ["model/layers/0/input_layernorm/weight", "model/layers/0/post_attention_layernorm/weight",
                       "model/norm/weight", "model/layers/0/self_attn/q_proj/bias", "model/layers/0/self_attn/q_proj/kernel"],
    }.items()}
    assert decayed == {BERT_LAYOUT: ["bert/encoder/layer/0/attention/self/query/kernel"],
                       LLAMA_LAYOUT: ["model/layers/0/self_attn/q_proj/kernel"]}

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_warmup_then_decay_to_zero(kind):
    lr = schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, lr_scheduler_type=kind), 1.0, 110)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5) and float(lr(10)) == pytest.approx(1.0)
    assert float(lr(60)) == pytest.approx(0.5, abs=1e-6) and float(lr(110)) == pytest.approx(0.0, abs=1e-6)


def test_gradient_clipping_bounds_the_global_norm():
    config = OptimizerConfig(learning_rate=0.1, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant")
    clipped, plain = build_optimizer(config, 10), optax.adam(0.1)
    big = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), PARAMS)
    small = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), PARAMS)
    norm = float(optax.tree.norm(big))
    a, state = update(clipped, big, clipped.init(PARAMS), PARAMS)
    a, _ = update(clipped, small, state, a)
    b, state = update(plain, jax.tree.map(lambda g: g / norm, big), plain.init(PARAMS), PARAMS)
    b, _ = update(plain, small, state, b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6)


def test_gradient_accumulation_equals_one_step_on_the_mean_gradient():
    config = OptimizerConfig(learning_rate=0.1, gradient_accumulation_steps=2, lr_scheduler_type="constant")
    single = OptimizerConfig(learning_rate=0.1, lr_scheduler_type="constant")
    g1 = jax.tree.map(lambda p: jnp.full_like(p, 0.3), PARAMS)
    g2 = jax.tree.map(lambda p: jnp.full_like(p, -0.1), PARAMS)
    tx = build_optimizer(config, 10)
    after_first, state = update(tx, g1, tx.init(PARAMS), PARAMS)
    for x, y in zip(jax.tree.leaves(after_first), jax.tree.leaves(PARAMS)):
        np.testing.assert_array_equal(x, y)  # nothing applied until the second micro-batch
    accumulated, _ = update(tx, g2, state, after_first)
    one = build_optimizer(single, 10)
    expected, _ = update(one, jax.tree.map(lambda a, b: (a + b) / 2, g1, g2), one.init(PARAMS), PARAMS)
    for x, y in zip(jax.tree.leaves(accumulated), jax.tree.leaves(expected)):
        np.testing.assert_allclose(x, y, rtol=1e-6)


def test_new_parameters_get_their_own_learning_rate():
    config = OptimizerConfig(learning_rate=0.001, new_learning_rate=0.1, weight_decay=0.0,
                             lr_scheduler_type="constant", max_grad_norm=None)
    new = PathRules((Rule(r"^classifier/", True), Rule(".*", False)))
    tx = build_optimizer(config, 10, new)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    moved, _ = update(tx, grads, tx.init(PARAMS), PARAMS)
    assert float(1 - moved["classifier"]["kernel"][0, 0]) == pytest.approx(0.1, rel=1e-4)
    assert float(1 - moved["encoder"]["dense"]["kernel"][0, 0]) == pytest.approx(0.001, rel=1e-4)


def test_bad_optimizer_settings_are_refused():
    with pytest.raises(ValueError, match="lr_scheduler_type 'step' is unknown; valid: linear, cosine, constant"):
        OptimizerConfig(lr_scheduler_type="step")
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be at least 1"):
        OptimizerConfig(gradient_accumulation_steps=0)
