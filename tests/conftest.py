"""Test settings: strict JAX numerics, 8 simulated CPU devices, a persistent compilation cache."""

import csv
import fcntl
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
_cache = Path(os.environ.get("TLJAX_CACHE", Path.home() / ".cache" / "tljax")).expanduser() / "jax-compilation"
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
torch.set_num_threads(2)


def cli_env(devices: int = 8, **variables: str) -> dict[str, str]:
    """The environment of a `python -m tljax...` process a test starts: JAX on `devices` simulated CPU devices
    (8, as this process, unless the test says), no fault injected unless `variables` name one, and torch
    hidden (tests/user_site/sitecustomize.py), as in a user's install without the test extra."""
    env = {k: v for k, v in os.environ.items() if k != "TLJAX_FAULTS"}
    path = [str(Path(__file__).parent / "user_site"), *filter(None, [env.get("PYTHONPATH")])]
    return {**env, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices), "PYTHONPATH": os.pathsep.join(path),
            **variables}


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module: JAX's compiled programs and traces dropped, garbage collected. Two test workers
    share the 24 GB of a CI machine, and each would otherwise keep every program it ever compiled alive (those
    of the real models run to hundreds of MB); the persistent compilation cache makes a recompile a disk read."""
    yield
    gc.collect()
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def rng() -> np.random.RandomState:
    return np.random.RandomState(0)


def padded_batch(rng: np.random.RandomState, vocab: int, lengths: list[int], *, left: bool = False, low: int = 3):
    """Token ids [B, T] and a mask [B, T] for sequences of the given lengths, padded to the longest."""
    width = max(lengths)
    ids = rng.randint(low, vocab, (len(lengths), width))
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        if left:
            mask[row, width - n:] = 1
        else:
            mask[row, :n] = 1
    return ids * mask, mask


POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring"]
FILLER = ["the", "film", "was", "a", "movie", "plot", "actors", "story", "really", "quite", "and", "it"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]


def save_word_tokenizer(directory: Path, *, bert: bool) -> None:
    """A word-level tokenizer over WORDS saved in `directory`: BERT's ([CLS] text [SEP], a mask token) or a
    decoder's (no template, [SEP] as end of text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if bert:
        tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                                 special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        special = {"cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
    else:
        special = {"eos_token": "[SEP]"}
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                            **special).save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random BERT with a word-level tokenizer, saved as a Hugging Face directory."""
    from tljax.models import BertModel, EncoderConfig

    directory = tmp_path_factory.mktemp("tiny-bert")
    save_word_tokenizer(directory, bert=True)

    config = EncoderConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=48, max_position_embeddings=64)
    BertModel.from_config(config, seed=0).save_pretrained(directory / "model")
    for item in (directory / "model").iterdir():
        item.rename(directory / item.name)
    return directory


def write_reviews(path: Path, n: int = 240, seed: int = 0, label_names=("neg", "pos")) -> Path:
    rng = np.random.RandomState(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        for i in range(n):
            label = i % 2
            words = list(rng.choice(FILLER, rng.randint(3, 9))) + [rng.choice(POSITIVE if label else NEGATIVE)]
            rng.shuffle(words)
            writer.writerow([" ".join(words), label_names[label]])
    return path


def shared_folder(tmp_path_factory) -> Path:
    """The folder every test worker of this session sees (the workers' common parent under xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_run(tmp_path_factory, name: str, config: dict | None = None, *overrides: str) -> Path:
    """A `python -m tljax.train` run trained once per test session, shared by the test workers: the first
    worker to ask trains it, the others wait for it (a lock beside it); a run left unfinished is retrained.
    It runs as a user runs it, in its own process on one CPU device (the batch sizes are the global ones), so
    that its model's memory is not held by the test worker: `config` as its --config file, or the embedded
    default run when None; `overrides` as its --set arguments. Its stdout and stderr are kept beside it
    (`<name>.stdout`, `<name>.stderr`)."""
    root = shared_folder(tmp_path_factory)
    run_dir = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run_dir / "summary.json").is_file():
            shutil.rmtree(run_dir, ignore_errors=True)
            command = [sys.executable, "-m", "tljax.train"]
            if config is not None:
                path = root / f"{name}.yaml"
                path.write_text(yaml.safe_dump({**config, "output_dir": str(run_dir)}))
                command += ["--config", str(path)]
            command += [arg for setting in (*overrides, f"output_dir={run_dir}") for arg in ("--set", setting)]
            done = subprocess.run(command, env=cli_env(devices=1), capture_output=True, text=True)
            (root / f"{name}.stdout").write_text(done.stdout)
            (root / f"{name}.stderr").write_text(done.stderr)
            assert done.returncode == 0, f"the shared run {name} failed ({exit_status(done.returncode)}):\n" \
                f"{without_progress_bars(done.stderr)[-3000:]}"
    return run_dir


def exit_status(returncode: int) -> str:
    """How a process ended, in words: `exit code 1`, or `killed by SIGKILL` (what the OOM killer sends)."""
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def without_progress_bars(text: str) -> str:
    """A process's stderr without tqdm's redrawn bars (`\\r`-separated, `N/M [..., step/s]`), so that what is
    left to show is its warnings and its traceback."""
    lines = re.split(r"[\r\n]+", text)
    return "\n".join(line for line in lines if line.strip() and not re.search(r"\d+/\d+ \[[^\]]*\]", line))


def shared_value(tmp_path_factory, name: str, compute):
    """`compute()` once per test session, shared by the test workers as `shared_run` shares a run: the first
    worker to ask computes it and pickles it beside the runs, the others read it."""
    import pickle

    root = shared_folder(tmp_path_factory)
    path = root / f"{name}.pickle"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            value = compute()
            path.with_suffix(".partial").write_bytes(pickle.dumps(value))
            path.with_suffix(".partial").rename(path)  # whole or absent: a worker that died mid-way left nothing
        return pickle.loads(path.read_bytes())


@pytest.fixture(scope="session")
def smollm2_chat_run(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct taught English film-review sentiment with LoRA in the harness's own chat form (the
    sentiment-en task's English instruction and verbalisers): a couple of minutes on two cores. After its 20
    steps it scored 0.805 on the CI suite's 200 reviews (MCC 0.60), against 0.635 zero-shot (MCC 0.27)."""
    from harness.tasks import load_task

    template = load_task("sentiment-en").template("en")
    return shared_run(tmp_path_factory, "smollm2-chat-lora", {
        "model": "smollm2-135m-instruct", "task": "causal-lm",
        # the 20 steps take 160 of the 2,000 training reviews; 32 validation and test reviews (the run's own
        # evaluation is not what the tests check: the CI suite scores the run on its 200)
        "data": {"source": "rotten-tomatoes", "max_length": 128, "max_train_examples": 2000, "max_eval_examples": 32},
        "chat": {"instruction": template.instruction,
                 "verbalisers": dict(zip(("negative", "positive"), template.verbalisers))},
        "method": {"name": "lora", "rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["q_proj", "v_proj"]},
        "training": {"learning_rate": 2e-3, "max_steps": 20, "per_device_train_batch_size": 8,
                     "per_device_eval_batch_size": 8, "eval_steps": 20, "warmup_ratio": 0.1,
                     "early_stopping_patience": None}})


@pytest.fixture(scope="session")
def e5_english_run(tmp_path_factory) -> Path:
    """Multilingual e5-small with LoRA on English film reviews only, scored on the Portuguese set at the end
    (a minute or two on two cores)."""
    return shared_run(tmp_path_factory, "e5-english-lora", {
        "model": "e5-small",
        "data": {"source": "rotten-tomatoes", "max_length": 48, "max_eval_examples": 256, "text_prefix": "query: "},
        "method": {"name": "lora", "rank": 8, "targets": ["query", "value"]},
        "training": {"learning_rate": 3e-3, "max_steps": 60, "per_device_train_batch_size": 32,
                     "per_device_eval_batch_size": 64, "eval_steps": 30, "warmup_ratio": 0.1,
                     "early_stopping_patience": None},
        "evaluation": {"pt": "reviews-pt"}})


@pytest.fixture(scope="session")
def minilm_run(tmp_path_factory) -> Path:
    """The default run (`python -m tljax.train`: LoRA on MiniLM-L6, English film reviews) at a reduced budget:
    100 steps, 512 validation and test reviews. Its test checks the command's output; the harness scores it,
    the app shows it, and the distillation tests take it as their teacher."""
    return shared_run(tmp_path_factory, "minilm-lora", None, *DEFAULT_RUN_BUDGET)


DEFAULT_RUN_BUDGET = ("training.max_steps=100", "training.eval_steps=50", "data.max_eval_examples=512")


def reduced_config(name: str, **training) -> dict:
    """configs/<name> at a reduced budget (the runs' own figures at the full one: docs/ner.md)."""
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / name).read_text())
    config["training"] = {**config["training"], **training, "early_stopping_patience": None}
    return config


@pytest.fixture(scope="session")
def minilm_ner_run(tmp_path_factory) -> Path:
    """configs/ner.yaml (LoRA on MiniLM-L6, the English NER set) at 100 steps: its test checks the figures, the
    app shows it."""
    return shared_run(tmp_path_factory, "minilm-ner", reduced_config("ner.yaml", max_steps=100, eval_steps=50))


# The modules whose tests train or score real models, in the order the two test workers take them
# (`pytest -n 2`, which the project's settings make hand out whole modules, in this order, to whichever worker is
# free). The harness's CI suite trains the shared chat-tuned SmolLM2 run on one worker while the real-model tests
# train the shared MiniLM run (the default command's) on the other; the QA reader (e5, English and across
# languages) next; the transfer tests (e5, distillation from the MiniLM run) and the fault
# trials follow, then the app's, which needs both shared runs; then the modules of a
# minute or more, longest first, so that the last ones to run are the short modules, which even out the two
# workers' ends (with those mid-size modules in name order one worker ended 56 s before the other).
LONGEST_FIRST = ("test_harness_real", "test_real_models", "test_qa_cross_lingual_real",
                 "test_transfer_real", "test_gemma3_real", "test_tagging_real", "test_faults", "test_app_real",
                 "test_notebooks",
                 "test_benchmarks", "test_methods", "test_seq2seq", "test_t5_transfer", "test_tagging_runs", "test_transfer",
                 "test_gemma3", "test_t5", "test_gpt2", "test_harness", "test_qa",
                 "test_harness_entities", "test_app_answers", "test_qa_strategies", "test_harness_answers",
                 "test_qa_runs", "test_distributed", "test_train", "test_app", "test_app_entities", "test_checkpoints",
                 "test_sharding", "test_decoder", "test_chat", "test_tagging")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        module = item.path.stem
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module keeps its own order


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory):
    """A tiny random Llama with a word-level tokenizer and a chat template, saved as a Hugging Face directory."""
    import torch
    import transformers

    directory = tmp_path_factory.mktemp("tiny-llama")
    save_word_tokenizer(directory, bert=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}" \
                              "{% if add_generation_prompt %}assistant {% endif %}"
    tokenizer.save_pretrained(directory)
    # The same tiny model in every session: a random decoder with tied embeddings favours words already in its
    # context, so its zero-shot accuracy on the 24 test reviews ranged from 0.33 to 0.83 over initial seeds 0-7
    # (chat-tuned from it: 0.83 to 1.0; from seed 0: 0.42 zero-shot, 1.0 tuned).
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                                      max_position_embeddings=128, initializer_range=0.2, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_base_decoder(tiny_decoder, tmp_path_factory):
    """`tiny_decoder` as a base model is: the same weights and tokenizer, without a chat template."""
    directory = tmp_path_factory.mktemp("tiny-llama-base") / "model"
    shutil.copytree(tiny_decoder, directory)
    (directory / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    return directory


# -- a tiny tagging task (tests/test_tagging_runs.py, tests/test_harness_entities.py) ---------------------------


def write_tagged(path, n: int = 160, seed: int = 0):
    """Texts of filler words with a few entity words: POSITIVE words are people, NEGATIVE words places."""
    rng = np.random.RandomState(seed)
    with path.open("w") as handle:
        for i in range(n):
            words = list(rng.choice(FILLER, rng.randint(3, 8)))
            spans, text = [], ""
            for word in words + [rng.choice(POSITIVE), rng.choice(NEGATIVE)]:
                text += (" " if text else "")
                if word in POSITIVE or word in NEGATIVE:
                    spans.append({"start": len(text), "end": len(text) + len(word),
                                  "label": "PER" if word in POSITIVE else "LOC"})
                text += word
            handle.write(json.dumps({"text": text, "entities": spans, "document": f"d{i // 4}"}) + "\n")
    return path


def tagging_config(tmp_path, tiny_model, method=None, **training):
    config = {"model": str(tiny_model), "task": "token-classification",
              "data": {"source": str(write_tagged(tmp_path / "tagged.jsonl")), "max_length": 32},
              "method": method or {"name": "lora", "rank": 8},
              "training": {"learning_rate": 5e-2, "max_steps": 24, "per_device_train_batch_size": 16,
                           "eval_steps": 8, "early_stopping_patience": None, "metric_for_best_model": "f1",
                           **training},
              "output_dir": str(tmp_path / "run")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def tagger(tmp_path_factory, tiny_model):
    """A finished LoRA tagging run on the tiny model (its directory holds `run/` and `config.yaml`), and what
    the command printed: the resume, export and prediction tests read it, it teaches the distillation test's
    student, and the harness scores it on an entity task."""
    import contextlib
    import io

    from tljax.train.__main__ import main

    folder = tmp_path_factory.mktemp("tagger")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--config", str(tagging_config(folder, tiny_model))]) == 0
    return folder, printed.getvalue()


def write_squad(path, n: int = 96, seed: int = 0):
    """A SQuAD v2 file of passages of filler words (some longer than the tiny model's window), one question each
    ("the film"): its answer is the passage's one POSITIVE word; a sixth of the passages have none (unanswerable)."""
    rng = np.random.RandomState(seed)
    data = []
    for i in range(n):
        words = list(rng.choice(FILLER, rng.randint(6, 26)))
        answer = None
        if i % 6:
            answer = str(rng.choice(POSITIVE))
            words.insert(rng.randint(0, len(words) + 1), answer)
        context = " ".join(words)
        start = (" " + context + " ").index(f" {answer} ") if answer else None
        qa = {"id": f"q{i}", "question": "the film", "is_impossible": answer is None,
              "answers": [{"text": answer, "answer_start": start}] if answer else []}
        data.append({"title": f"article {i}", "paragraphs": [{"context": context, "qas": [qa]}]})
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return path


def qa_config(tmp_path, tiny_model, method=None, **training):
    config = {"model": str(tiny_model), "task": "question-answering",
              "data": {"source": str(write_squad(tmp_path / "squad.json")), "max_length": 24, "stride": 8,
                       "null_score_diff_threshold": "auto"},
              "method": method or {"name": "lora", "rank": 8},
              "training": {"learning_rate": 5e-2, "max_steps": 96, "per_device_train_batch_size": 16,
                           "eval_steps": 16, "early_stopping_patience": None, "metric_for_best_model": "f1",
                           **training},
              "output_dir": str(tmp_path / "run")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def reader(tmp_path_factory, tiny_model):
    """A finished LoRA question-answering run on the tiny model (its directory holds `run/` and `config.yaml`),
    and what the command printed: the resume, export and prediction tests read it, the harness scores it, and the
    app answers questions with it."""
    import contextlib
    import io

    from tljax.train.__main__ import main

    folder = tmp_path_factory.mktemp("reader")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--config", str(qa_config(folder, tiny_model))]) == 0
    return folder, printed.getvalue()


# -- the app's tiny runs and page (tests/test_app.py, tests/test_app_entities.py, tests/test_app_answers.py) ------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, tiny_model):
    """A runs folder with one finished LoRA run of the tiny BERT (labels neg / pos) and its CSV (the app's tests)."""
    from tljax.train.__main__ import main as train

    root = tmp_path_factory.mktemp("app")
    data = write_reviews(root / "reviews.csv")
    config = {"model": str(tiny_model),
              "data": {"source": str(data), "text_column": "review", "label_column": "sentiment", "max_length": 32},
              "method": {"name": "lora", "rank": 4, "targets": ["query", "value"]},
              "training": {"learning_rate": 1e-2, "max_steps": 6, "per_device_train_batch_size": 2, "eval_steps": 6},
              "output_dir": str(root / "runs" / "tiny-lora")}
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    assert train(["--config", str(root / "tiny.yaml")]) == 0
    task = {"name": "tiny-reviews", "data": {"source": str(data), "text_column": "review", "label_column": "sentiment"},
            "labels": ["neg", "pos"],
            "templates": {lang: {"instruction": "Review: {text}", "verbalisers": {"neg": "bad", "pos": "good"},
                                 "descriptions": {"neg": "A bad review.", "pos": "A good review."}}
                          for lang in ("en", "pt")}}
    (root / "tiny-reviews.yaml").write_text(yaml.safe_dump(task))
    return root


@pytest.fixture(scope="module")
def tiny_page(tiny_runs, tmp_path_factory):
    """The page over a copy of `tiny_runs`, launched: (its client, its service, its settings)."""
    from gradio_client import Client

    from harness.app.service import Service
    from harness.app.ui import Settings, build

    folder = tmp_path_factory.mktemp("page")
    runs = folder / "runs"
    shutil.copytree(tiny_runs / "runs", runs)
    settings = Settings([runs], [folder / "results"], folder / "votes.jsonl")
    service = Service(settings.runs)
    page = build(service, settings)
    page.launch(prevent_thread_lock=True, quiet=True, server_port=None)
    yield Client(page.local_url, verbose=False), service, settings
    page.close()
