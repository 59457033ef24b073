"""The T5 family against the PyTorch reference (`transformers` T5) on tiny random configs: T5 v1.0 (ReLU, output
layer tied to the embeddings and scaled) and T5 v1.1 (gated GELU, its own output layer)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from conftest import padded_batch
from tljax.methods import LoRA, PartialFineTuning, PromptTuning, adapt
from tljax.methods.lora import lora_modules
from tljax.models import ConfigError, T5Config, T5EncoderModel, T5ForConditionalGeneration, T5Model, model_class
from tljax.models.decoder.generate import sample_token
from tljax.models.t5.generate import generate, processed_log_probs
from tljax.models.t5.modeling import relative_position_bucket

forward = nnx.jit(lambda model, *arrays: model(*arrays))  # one trace per model structure and shapes

# few buckets and a short maximum distance: sequences of a dozen tokens reach the logarithmic buckets
TINY = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.1,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
VERSIONS = {"v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
            "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)}
EOS, PAD = 1, 0


@pytest.fixture(scope="module")
def batch():
    """Right-padded sources [4, 12] and target inputs [4, 8] (with padding); the tiny models learn to answer the
    first three sources with the first three targets, each ended by EOS (`trained`), and never see the fourth."""
    rng = np.random.RandomState(0)
    source, source_mask = padded_batch(rng, TINY["vocab_size"], [12, 7, 3, 9])
    target, target_mask = padded_batch(rng, TINY["vocab_size"], [8, 5, 3, 6])
    target[:, 0] = TINY["decoder_start_token_id"]
    return source, source_mask, target, target_mask


def trained(version: str, batch, steps: int) -> transformers.T5ForConditionalGeneration:
    """A tiny T5 trained for a few steps to answer the batch's first three sources with their targets (shifted
    left, then EOS): its outputs vary from token to token and end at different steps."""
    source, source_mask, target, target_mask = (torch.tensor(a[:3]) for a in batch)
    labels = torch.cat([target[:, 1:], torch.zeros_like(target[:, :1])], 1)
    labels = torch.where(torch.cat([target_mask[:, 1:], torch.zeros_like(target_mask[:, :1])], 1) == 1, labels, -100)
    labels[torch.arange(3), target_mask.sum(1) - 1] = EOS
    torch.manual_seed(0)
    reference = transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY, **VERSIONS[version]))
    if not VERSIONS[version]["tie_word_embeddings"]:  # transformers 5 builds every T5 tied: untie it
        reference.lm_head.weight = torch.nn.Parameter(torch.randn(TINY["vocab_size"], TINY["d_model"]))
    optimiser = torch.optim.Adam(reference.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model's steps: a second thread costs more than it gives on a busy machine
    try:
        for _ in range(steps):
            loss = reference(input_ids=source, attention_mask=source_mask, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return reference.eval()


# steps that leave each version's answers learned but not certain (v1.1 learns them sooner)
STEPS = {"v1.0": 45, "v1.1": 12}


_PAIRS: dict[str, tuple] = {}  # each version trained once for the module's fixtures


def trained_pair(version: str, batch, tmp_path_factory) -> tuple:
    """(version, PyTorch model, its directory, our model loaded from it)."""
    if version not in _PAIRS:
        reference = trained(version, batch, STEPS[version])
        directory = tmp_path_factory.mktemp(version)
        reference.save_pretrained(directory)
        _PAIRS[version] = version, reference, directory, T5ForConditionalGeneration.from_pretrained(directory)
    return _PAIRS[version]


@pytest.fixture(scope="module", params=list(VERSIONS))
def pair(request, batch, tmp_path_factory):
    """Each version's (version, PyTorch model, its directory, our model loaded from it)."""
    return trained_pair(request.param, batch, tmp_path_factory)


@pytest.fixture(scope="module")
def gated_pair(batch, tmp_path_factory):
    """T5 v1.1's pair alone, for what both versions do alike (sampling's steps, the layout, the prompt's slot)."""
    return trained_pair("v1.1", batch, tmp_path_factory)


def torch_logits(reference, source, source_mask, target, target_mask) -> np.ndarray:
    with torch.no_grad():
        return reference(input_ids=torch.tensor(source), attention_mask=torch.tensor(source_mask),
                         decoder_input_ids=torch.tensor(target),
                         decoder_attention_mask=torch.tensor(target_mask)).logits.numpy()


def test_encoder_and_logits_match_pytorch_on_a_padded_batch(pair, batch):
    version, reference, directory, model = pair
    source, source_mask, target, target_mask = batch
    assert (model.lm_head is None) == (version == "v1.0")
    assert model.config.scales_logits == (version == "v1.0")
    logits = forward(model, *map(jnp.asarray, batch))
    real = target_mask == 1
    np.testing.assert_allclose(np.asarray(logits)[real], torch_logits(reference, *batch)[real], atol=1e-5, rtol=0)

    with torch.no_grad():
        expected = reference.encoder(input_ids=torch.tensor(source),
                                     attention_mask=torch.tensor(source_mask)).last_hidden_state.numpy()
        decoded = transformers.T5Model.from_pretrained(directory).eval()(
            input_ids=torch.tensor(source), attention_mask=torch.tensor(source_mask),
            decoder_input_ids=torch.tensor(target), decoder_attention_mask=torch.tensor(target_mask)
        ).last_hidden_state.numpy()
    encoder = T5EncoderModel.from_pretrained(directory)  # a whole checkpoint's encoder
    hidden = forward(encoder, jnp.asarray(source), jnp.asarray(source_mask))
    np.testing.assert_allclose(np.asarray(hidden)[source_mask == 1], expected[source_mask == 1], atol=1e-5, rtol=0)
    ours = forward(T5Model.from_pretrained(directory), *map(jnp.asarray, batch))
    np.testing.assert_allclose(np.asarray(ours)[real], decoded[real], atol=1e-5, rtol=0)


def test_saved_directory_loads_in_pytorch_and_back(pair, batch, tmp_path):
    version, reference, _, model = pair
    model.save_pretrained(tmp_path / "ours")
    again = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    tied = again.lm_head.weight.data_ptr() == again.shared.weight.data_ptr()
    assert tied == (version == "v1.0") and again.config.scale_decoder_outputs == (version == "v1.0")
    real = batch[3] == 1
    expected = torch_logits(reference, *batch)[real]
    np.testing.assert_allclose(torch_logits(again, *batch)[real], expected, atol=1e-5, rtol=0)
    back = T5ForConditionalGeneration.from_pretrained(tmp_path / "ours")
    np.testing.assert_allclose(np.asarray(forward(back, *map(jnp.asarray, batch)))[real], expected, atol=1e-5,
                               rtol=0)


def test_relative_position_buckets_are_pytorchs():
    relative = np.arange(-300, 301)[None, :]  # key position - query position
    buckets_of = jax.jit(relative_position_bucket, static_argnames=("bidirectional", "num_buckets", "max_distance"))
    for bidirectional in (True, False):
        for buckets, distance in ((8, 16), (32, 128)):
            expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
                torch.tensor(relative), bidirectional=bidirectional, num_buckets=buckets, max_distance=distance)
            ours = buckets_of(jnp.asarray(relative, jnp.int32), bidirectional=bidirectional, num_buckets=buckets,
                              max_distance=distance)
            np.testing.assert_array_equal(np.asarray(ours), expected.numpy())


@pytest.mark.parametrize("changes, message", [
    ({"feed_forward_proj": "gated-swish"}, "activation 'swish' is not supported"),
    ({"feed_forward_proj": "relu-gated"}, "is not '<activation>' or 'gated-<activation>'"),
    ({"is_encoder_decoder": False}, "is_encoder_decoder=False is not supported"),
    ({"is_decoder": True}, "is_decoder=True is not supported"),
    ({"feed_forward_proj": "relu", "dense_act_fn": "gelu_new"}, "dense_act_fn contradicts"),
])
def test_config_refuses_what_it_does_not_implement_in_one_line(changes, message):
    raw = transformers.T5Config(**TINY).to_dict() | changes
    with pytest.raises(ConfigError, match=message) as error:
        T5Config.from_hf(raw)
    assert "\n" not in str(error.value)
    config = T5Config.from_hf(transformers.T5Config(**TINY, feed_forward_proj="gated-gelu").to_dict())
    assert (config.activation, config.is_gated_act, config.hidden_size, config.num_decoder_layers) == (
        "gelu_new", True, 32, 2)
    assert model_class("t5", "seq2seq-lm") is T5ForConditionalGeneration


def test_layout_addresses_both_stacks_and_layers_can_be_kept(pair):
    layout, model = T5ForConditionalGeneration.layout, pair[3]
    paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    assert model.num_layers == 2
    assert {layout.layer_index(p) for p in paths} == {0, 1, None}
    for path in paths:  # each parameter is a layer's, the embeddings' or above the layers
        owners = [layout.layer_index(path) is not None, bool(re.search(layout.embeddings, path)),
                  bool(re.search(layout.above_layers, path))]
        assert sum(owners) == 1, path
    student = T5ForConditionalGeneration.from_pretrained(pair[2])
    student.keep_layers([1])  # a distillation student's blocks: the position tables move to the kept block
    assert (student.num_layers, student.config.num_layers, student.config.num_decoder_layers) == (1, 1, 1)
    assert all(stack.block[0].layer[0].SelfAttention.relative_attention_bias is not None
               for stack in (student.encoder, student.decoder))


def ended(tokens: np.ndarray) -> np.ndarray:
    """Tokens [B, N] with `PAD` after each sequence's first end token (where transformers' beam search writes the
    end token again)."""
    after = (np.cumsum(tokens == EOS, 1) - (tokens == EOS)) > 0
    return np.where(after, PAD, tokens)


def test_greedy_tokens_and_scores_equal_transformers(pair, batch):
    _, reference, _, model = pair
    source, source_mask = batch[:2]
    ours = generate(model, source, source_mask, max_new_tokens=12)
    with torch.no_grad():
        out = reference.generate(torch.tensor(source), attention_mask=torch.tensor(source_mask), max_new_tokens=12,
                                 do_sample=False, output_scores=True, return_dict_in_generate=True)
    tokens = out.sequences.numpy()[:, 1:]
    tokens = np.pad(tokens, ((0, 0), (0, 12 - tokens.shape[1])), constant_values=PAD)
    np.testing.assert_array_equal(np.asarray(ours.tokens), tokens)
    assert len(set(tokens[0].tolist())) > 4, "the trained model should not repeat one token"
    assert (tokens[:3] == EOS).any(1).all(), "the learned answers should end"
    steps = reference.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).numpy()
    generated = out.sequences.numpy()[:, 1:]
    up_to_end = np.cumsum(generated == EOS, 1) - (generated == EOS) == 0
    np.testing.assert_allclose(np.asarray(ours.scores), (steps * up_to_end).sum(1), atol=1e-5, rtol=0)


# the search does not depend on the architecture: Hugging Face's defaults on one version, a length penalty that
# favours short answers and early stopping on the other
BEAM_OPTIONS = {"v1.0": {}, "v1.1": {"length_penalty": 0.6, "early_stopping": True}}


def test_beam_search_tokens_and_scores_equal_transformers(pair, batch):
    version, reference, _, model = pair
    options = BEAM_OPTIONS[version]
    source, source_mask = batch[:2]
    ours = generate(model, source, source_mask, max_new_tokens=10, num_beams=3, **options)
    with torch.no_grad():
        out = reference.generate(torch.tensor(source), attention_mask=torch.tensor(source_mask), max_new_tokens=10,
                                 num_beams=3, do_sample=False, output_scores=True, return_dict_in_generate=True,
                                 **options)
    tokens = out.sequences.numpy()[:, 1:]
    tokens = ended(np.pad(tokens, ((0, 0), (0, 10 - tokens.shape[1])), constant_values=PAD))
    np.testing.assert_array_equal(np.asarray(ours.tokens), tokens)
    np.testing.assert_allclose(np.asarray(ours.scores), out.sequences_scores.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, None, None), (1.3, 5, None), (1.0, None, 0.8),
                                                       (0.5, 20, 0.9)])
def test_sampling_draws_from_transformers_filtered_distribution(temperature, top_k, top_p):
    logits = np.random.RandomState(1).randn(4, TINY["vocab_size"]).astype(np.float32) * 3
    warpers = transformers.LogitsProcessorList(
        [transformers.TemperatureLogitsWarper(temperature)]
        + ([transformers.TopKLogitsWarper(top_k)] if top_k else [])
        + ([transformers.TopPLogitsWarper(top_p)] if top_p else []))
    expected = torch.log_softmax(warpers(None, torch.tensor(logits)), -1).numpy()
    ours = np.asarray(processed_log_probs(jnp.asarray(logits), temperature, top_k, top_p))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(expected))
    np.testing.assert_allclose(ours[~np.isinf(ours)], expected[~np.isinf(expected)], atol=1e-5, rtol=0)
    # `sample_token` draws from exactly that distribution (the same Gumbel draw picks the same token)
    keys = jax.random.split(jax.random.key(0), 64)
    drawn = jax.vmap(lambda k: sample_token(jnp.asarray(logits), k, temperature, top_k, top_p))(keys)
    again = jax.vmap(lambda k: jax.random.categorical(k, jnp.asarray(ours), axis=-1))(keys)
    np.testing.assert_array_equal(np.asarray(drawn), np.asarray(again))


def test_sampled_generation_is_reproducible_and_checked(gated_pair, batch):
    _, _, _, model = gated_pair
    source, source_mask = batch[:2]
    sampled = [np.asarray(generate(model, source, source_mask, max_new_tokens=12, temperature=1.0, seed=seed).tokens)
               for seed in (1, 1, 2)]
    np.testing.assert_array_equal(sampled[0], sampled[1])
    assert not np.array_equal(sampled[0], sampled[2])
    with pytest.raises(ConfigError, match="num_beams=1"):
        generate(model, source, source_mask, num_beams=2, temperature=1.0)
    with pytest.raises(ConfigError, match="top_p must be in"):
        generate(model, source, source_mask, temperature=1.0, top_p=1.5)


def test_methods_find_t5s_projections_layers_and_input(gated_pair, batch):
    """LoRA's default targets are q, k, v and o of every attention, self and cross, in both stacks (PEFT's default
    is q and v); a soft prompt goes before the source's embeddings, as PEFT's prompt tuning feeds a seq2seq model
    (checked through transformers' inputs_embeds); partial fine-tuning's bottom layer is block 0 of both stacks."""
    version, reference, directory, _ = gated_pair
    model = T5ForConditionalGeneration.from_pretrained(directory)
    adaptation = adapt(model, [LoRA()])
    paths = [path for path, _ in lora_modules(model)]
    attentions = {p.rsplit("/", 1)[0] for p in paths}
    assert len(paths) == 4 * (2 + 2 * 2) and {p.rsplit("/", 1)[-1] for p in paths} == {"q", "k", "v", "o"}
    assert attentions == {f"{stack}/block/{i}/layer/0/SelfAttention" for stack in ("encoder", "decoder")
                          for i in (0, 1)} | {f"decoder/block/{i}/layer/1/EncDecAttention" for i in (0, 1)}
    trainable, _ = adaptation.count()
    assert trainable == sum(8 * (m.in_features + m.out_features) for _, m in lora_modules(model))

    model = T5ForConditionalGeneration.from_pretrained(directory)
    adapt(model, [PromptTuning(num_virtual_tokens=3, init="random")])
    prompt = np.asarray(model.prompt.table())
    source, source_mask, target, target_mask = batch
    with torch.no_grad():
        embeds = reference.shared(torch.tensor(source))
        embeds = torch.cat([torch.tensor(prompt)[None].expand(len(source), -1, -1), embeds], 1)
        expected = reference(inputs_embeds=embeds, attention_mask=torch.tensor(np.pad(source_mask, ((0, 0), (3, 0)),
                                                                                        constant_values=1)),
                             decoder_input_ids=torch.tensor(target),
                             decoder_attention_mask=torch.tensor(target_mask)).logits.numpy()
    real = target_mask == 1
    np.testing.assert_allclose(np.asarray(forward(model, *map(jnp.asarray, batch)))[real], expected[real], atol=1e-5,
                               rtol=0)

    model = T5ForConditionalGeneration.from_pretrained(directory)
    rules = adapt(model, [PartialFineTuning(freeze_layers=1)]).rules()
    frozen = {path for path, _, rule in rules.report(model) if not rule.trainable}
    assert frozen and all(re.search(r"^shared/|^(?:encoder|decoder)/block/0/", path) for path in frozen)
    assert any(path.startswith("decoder/block/0/") for path in frozen)
