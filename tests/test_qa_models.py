"""The span heads of question answering against the PyTorch reference (`BertForQuestionAnswering`,
`LlamaForQuestionAnswering`) on tiny random models, both ways."""

import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from conftest import padded_batch
from test_decoder import TINY as LLAMA
from test_decoder import positions
from test_encoder import TINY as BERT
from tljax.models import BertForQuestionAnswering, LlamaForCausalLM, LlamaForQuestionAnswering, from_pretrained


def spans(model, *inputs) -> np.ndarray:
    return np.asarray(nnx.jit(lambda m, *a: m(*a))(model, *map(jnp.asarray, inputs)))


def torch_spans(model, ids, mask, **extra) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                    **{k: torch.tensor(v) for k, v in extra.items()})
    return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)


def test_encoder_span_scores_match_pytorch_both_ways(tmp_path, rng):
    torch.manual_seed(0)
    reference = transformers.BertForQuestionAnswering(transformers.BertConfig(**BERT)).eval()
    reference.save_pretrained(tmp_path / "torch")
    ids, mask = padded_batch(rng, BERT["vocab_size"], [11, 6, 3])
    types = (np.arange(11)[None] >= 4).astype(np.int64).repeat(3, 0) * mask  # question, then context
    model = from_pretrained(tmp_path / "torch", task="question-answering")
    assert isinstance(model, BertForQuestionAnswering)
    expected = torch_spans(reference, ids, mask, token_type_ids=types)
    real = mask == 1
    np.testing.assert_allclose(spans(model, ids, mask, types)[real], expected[real], atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "ours")
    again = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "ours").eval()
    assert type(again).__name__ == "BertForQuestionAnswering"
    np.testing.assert_allclose(torch_spans(again, ids, mask, token_type_ids=types)[real], expected[real], atol=1e-5,
                               rtol=0)


def test_decoder_span_scores_match_pytorch_both_ways(tmp_path, rng):
    torch.manual_seed(0)
    reference = transformers.LlamaForQuestionAnswering(transformers.LlamaConfig(**LLAMA)).eval()
    reference.save_pretrained(tmp_path / "torch")
    assert any(k.startswith("transformer.") for k in reference.state_dict())  # its backbone's name
    ids, mask = padded_batch(rng, LLAMA["vocab_size"], [9, 5])
    model = LlamaForQuestionAnswering.from_pretrained(tmp_path / "torch")
    expected = torch_spans(reference, ids, mask, position_ids=positions(mask))
    real = mask == 1
    np.testing.assert_allclose(spans(model, ids, mask)[real], expected[real], atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "ours")
    again = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "ours").eval()
    assert type(again).__name__ == "LlamaForQuestionAnswering"
    np.testing.assert_allclose(torch_spans(again, ids, mask, position_ids=positions(mask))[real], expected[real],
                               atol=1e-5, rtol=0)


def test_a_causal_lm_checkpoint_becomes_the_backbone_of_a_span_model(tmp_path, rng):
    """A causal LM names its backbone `model.`, Hugging Face's span model `transformer.`: the pre-trained
    weights load into it and only the span head is new."""
    causal = LlamaForCausalLM.from_config(__import__("tljax").models.DecoderConfig.from_hf(LLAMA), seed=2)
    causal.save_pretrained(tmp_path)
    model = LlamaForQuestionAnswering.from_pretrained(tmp_path)
    ids, mask = padded_batch(rng, LLAMA["vocab_size"], [6])
    hidden, _ = causal.model(jnp.asarray(ids), jnp.asarray(mask))
    ours, _ = model.transformer(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(hidden))
