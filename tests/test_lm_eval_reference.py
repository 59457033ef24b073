"""The lm-eval reference (tests/lm_eval_reference.py) against a direct PyTorch computation on a tiny Llama."""

import pytest
import torch
from conftest import WORDS, save_word_tokenizer

pytest.importorskip("lm_eval")

import lm_eval_reference as ref


def test_loglikelihoods_match_a_direct_pytorch_computation(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    save_word_tokenizer(tmp_path, bert=False)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}" \
                              "{% if add_generation_prompt %}assistant{% endif %}"
    tokenizer.save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, initializer_range=0.2)  # peaked logits
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path)

    requests = [("the film was", " dull"), ("the plot was really quite", " good and lovely"),
                ("it", " was a boring movie"), ("", " great"), ("the actors", " superb"),
                ("the actors", " movie"), ("it was", " lovely")]  # the last two are greedy
    got = ref.loglikelihoods(tmp_path, requests, batch_size=4)  # two batches, unequal lengths

    for (context, continuation), (logprob, greedy) in zip(requests, got, strict=True):
        context_ids = tokenizer.encode(context) or [tokenizer.eos_token_id]  # no BOS: the EOS is the prefix
        continuation_ids = tokenizer.encode(continuation)
        assert ref.encode_pair(tokenizer, context, continuation) == (context_ids, continuation_ids)
        assert ref.hflm_encode_pair(tmp_path, context, continuation) == (context_ids, continuation_ids)
        with torch.no_grad():
            logits = model(torch.tensor([context_ids + continuation_ids[:-1]])).logits[0, len(context_ids) - 1:]
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor(continuation_ids)
        expected = logprobs.gather(-1, targets[:, None]).sum().item()
        assert logprob == pytest.approx(expected, abs=1e-5)
        assert greedy == bool((logprobs.argmax(-1) == targets).all())

    assert [greedy for _, greedy in got] == [False] * 5 + [True] * 2

    messages = [{"role": "user", "content": "the film"}]
    assert ref.chat_context(tmp_path, messages) == "user the film assistant"


def test_plain_requests_are_lm_evaluations_default_multiple_choice_prompt():
    """Without a chat template: "question answer\\n\\n" per few-shot example, then the question; " " + choice."""
    context = "q2 bad\n\nq3 good\n\nq1"
    assert ref.plain_requests("q1", ["good", "bad"], [("q2", 1), ("q3", 0)]) == [(context, " good"),
                                                                                 (context, " bad")]
    assert ref.plain_requests("q1", ["good", "bad"]) == [("q1", " good"), ("q1", " bad")]
