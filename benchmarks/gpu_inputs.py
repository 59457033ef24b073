"""The GPU check's inputs, made in code (the device has no network): random-weight models of MiniLM-L6's and
SmolLM2-135M's shapes saved as Hugging Face directories, a WordPiece tokenizer trained on a generated review
CSV, the CSV itself and the train step's batches (`make_inputs`). `--smoke` shrinks every shape so that the
check runs on a CPU.

Imports neither JAX nor tljax's models: the models are written with `transformers` (PyTorch), as a user's
downloaded checkpoint would be, and both sides load them from the directory.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2's BERT) and SmolLM2-135M(-Instruct)'s configs.
MINILM = dict(model_type="bert", vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512)
SMOLLM2 = dict(model_type="llama", vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=8192, rope_theta=100000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True)
# The smoke shapes: the same families, a few thousand times smaller.
SMOKE_SHAPES = {"minilm": {**MINILM, "vocab_size": 600, "hidden_size": 32, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128},
                "smollm2": {**SMOLLM2, "vocab_size": 600, "hidden_size": 48, "num_hidden_layers": 2,
                            "num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 64,
                            "max_position_embeddings": 256}}
SHAPES = {"minilm": MINILM, "smollm2": SMOLLM2}
FAMILIES = tuple(SHAPES)
# [batch, length] of each family's train-step batches. The smoke batches hold 8 rows so that they split evenly
# over the 8 simulated CPU devices of the test process, which runs both sides' train step on them.
BATCH_SHAPES = {"minilm": (32, 128), "smollm2": (8, 256)}
SMOKE_BATCH_SHAPES = {"minilm": (8, 32), "smollm2": (8, 16)}
BATCH_VOCAB = 500  # batch ids stay below every shape's vocabulary (the smoke one is 600)
REVIEWS, SMOKE_REVIEWS = 2000, 200

POSITIVE = ("wonderful", "moving", "brilliant", "funny", "gripping", "charming", "superb", "tender")
NEGATIVE = ("dull", "tedious", "clumsy", "boring", "hollow", "lifeless", "awful", "bland")
FILLER = ("the", "film", "story", "cast", "plot", "scenes", "director", "music", "ending", "script", "was", "is",
          "a", "an", "and", "but", "with", "its", "of", "this", "that", "performance", "camera", "dialogue",
          "pace", "actors", "felt", "seemed", "quite", "rather", "very", "at", "times", "overall", "sequel")


def shape(family: str, smoke: bool) -> dict[str, Any]:
    """The config (a `transformers` config's keys) of `family` ("minilm" or "smollm2") at full or smoke size."""
    return dict((SMOKE_SHAPES if smoke else SHAPES)[family])


def batch_shape(family: str, smoke: bool) -> tuple[int, int]:
    """(batch, length) of `family`'s train-step batches at full or smoke size."""
    return (SMOKE_BATCH_SHAPES if smoke else BATCH_SHAPES)[family]


@dataclass(frozen=True)
class Inputs:
    """Where the check's inputs lie in its work folder (`make_inputs` writes them)."""

    work: Path

    @property
    def csv(self) -> Path:
        return self.work / "reviews.csv"

    def model(self, family: str) -> Path:
        return self.work / family

    def batches(self, family: str) -> Path:
        return self.work / f"{family}.npz"

    @property
    def run(self) -> Path:
        """The end-to-end training run's folder."""
        return self.work / "run"


def make_inputs(work: Path, smoke: bool) -> Inputs:
    """The review CSV, a model directory per family (its tokenizer trained on the CSV's texts) and two random
    batches per family, written under `work`."""
    inputs = Inputs(work)
    work.mkdir(parents=True, exist_ok=True)
    write_reviews(inputs.csv, SMOKE_REVIEWS if smoke else REVIEWS)
    texts = read_texts(inputs.csv)
    for family in FAMILIES:
        write_model(family, inputs.model(family), texts, smoke=smoke)
        batch, length = batch_shape(family, smoke)
        save_batches(inputs.batches(family), [random_batch(batch, length, BATCH_VOCAB, seed=i) for i in range(2)])
    return inputs


def write_reviews(path: Path, count: int, seed: int = 0) -> Path:
    """A CSV of `count` synthetic film reviews (columns text, label: positive / negative), 10-60 words each,
    whose label a model can learn from the sentiment words in it."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(count):
            positive = i % 2 == 1
            words = list(rng.choice(FILLER, rng.integers(10, 60)))
            words += list(rng.choice(POSITIVE if positive else NEGATIVE, rng.integers(1, 4)))
            rng.shuffle(words)
            writer.writerow([" ".join(words), "positive" if positive else "negative"])
    return path


def train_tokenizer(texts: list[str], directory: Path, *, bert: bool, vocab_size: int = 2000) -> None:
    """A WordPiece tokenizer trained on `texts`, saved in `directory`: BERT's ([CLS] text [SEP]) or a
    decoder's (no template, an end-of-text token, a chat template for generation prompts)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    if bert:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))])
        names = {"cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
    else:
        names = {"eos_token": "[SEP]", "bos_token": "[CLS]"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", **names)
    if not bert:
        fast.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                              "{% if add_generation_prompt %}assistant:{% endif %}")
    fast.save_pretrained(directory)


def write_model(family: str, directory: Path, texts: list[str], *, smoke: bool, seed: int = 0) -> Path:
    """A random-weight model of `family`'s shape with a tokenizer trained on `texts`, saved in `directory`
    (float32 safetensors, as `from_pretrained` reads them). The vocabulary is the model's; the tokenizer
    uses its first ids only."""
    import torch
    import transformers

    config = shape(family, smoke)
    model_type = config.pop("model_type")
    torch.manual_seed(seed)
    if model_type == "bert":
        model = transformers.BertModel(transformers.BertConfig(**config))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config, pad_token_id=0, bos_token_id=2,
                                                                      eos_token_id=3))
    model.save_pretrained(directory)
    train_tokenizer(texts, directory, bert=model_type == "bert", vocab_size=min(2000, config["vocab_size"]))
    return directory


def read_texts(path: Path) -> list[str]:
    """The text column of a review CSV."""
    with path.open(newline="") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def random_batch(batch_size: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One full batch of random ids [B, T] with labels [B] (the layout `benchmarks.common.load_batches` reads)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (batch_size, length), dtype=np.int32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": rng.integers(0, 2, batch_size, dtype=np.int32),
            "weights": np.ones(batch_size, np.float32)}


def save_batches(path: Path, batches: list[dict[str, np.ndarray]]) -> Path:
    """`batches` in one .npz, as `benchmarks.common.load_batches` reads them."""
    arrays = {f"{i}/{key}": value for i, batch in enumerate(batches) for key, value in batch.items()}
    np.savez(path, count=len(batches), **arrays)
    return path
