"""T5 trained by sequence-to-sequence transfer, on a tiny random T5 over the digits: the objective's loss against
PyTorch's (the prompt alone in the encoder, as Hugging Face tokenises an input; the target shifted right), a copy task
learnt through the command and predicted, a multi-task LoRA run exported as a merged Hugging Face T5 and as a
SEQ_2_SEQ_LM PEFT adapter with PyTorch's logits, soft prompts as PEFT adapters, prefix tuning against PyTorch's past
keys and values, BitFit's biases kept by tljax's own export, layers as gradual unfreezing opens them, the methods
table, and each refusal in one line."""

import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
import yaml
from flax import nnx

from conftest import padded_batch
from tljax.methods import BitFit, LoRA, PrefixTuning, PromptTuning, PTuning, adapt, make_method
from tljax.methods.peft import save_peft
from tljax.models import T5ForConditionalGeneration
from tljax.models.checkpoint import model_to_hf_tensors
from tljax.train.__main__ import main

DIGITS = list("0123456789")
WORDS = ["<pad>", "</s>", "<unk>", *DIGITS, "copy", "first", ":"]
PAD, EOS = 0, 1
# T5 v1.0's form (ReLU, the output layer tied to the embeddings); no dropout, so that runs compare exactly
TINY = dict(vocab_size=len(WORDS), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
            feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=PAD, eos_token_id=EOS)

forward = nnx.jit(lambda model, *arrays: model(*arrays))


@pytest.fixture(scope="module")
def digits_t5(tmp_path_factory) -> Path:
    """A tiny random T5 over the digits with a word-level tokenizer that ends every text with </s>, as T5's does,
    and 1,200 copy pairs of 2-3 digits beside it (pairs.jsonl)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("digits-t5")
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>",
                            eos_token="</s>").save_pretrained(directory)
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY)).save_pretrained(directory)
    rng = np.random.default_rng(0)
    with (directory / "pairs.jsonl").open("w") as handle:
        for _ in range(1200):
            digits = " ".join(rng.choice(DIGITS, rng.integers(2, 4)))
            handle.write(json.dumps({"digits": digits, "copy": digits}) + "\n")
    return directory


def run_config(tmp_path: Path, model: Path, name: str = "run", method: dict | None = None, **training) -> Path:
    config = {"model": str(model), "task": "seq2seq",
              "data": {"source": str(model / "pairs.jsonl"), "text_column": "digits", "target_column": "copy",
                       "max_length": 16, "max_target_length": 5, "max_eval_examples": 64},
              "method": method or {"name": "full"},
              "training": {"learning_rate": 1e-2, "max_steps": 300, "per_device_train_batch_size": 4,
                           "per_device_eval_batch_size": 8, "eval_steps": 100, "metric_for_best_model": "chrf",
                           "early_stopping_patience": None, "warmup_ratio": 0.05, **training},
              "output_dir": str(tmp_path / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def perturb(adaptation, seed: int = 0, scale: float = 0.2, which=None) -> None:
    """Adds noise to every trainable parameter (as training would), so none keeps its initial value; `which`: another
    filter of the parameters to change."""
    rng = np.random.RandomState(seed)
    state = nnx.state(adaptation.model, which or adaptation.trainable())
    for _, variable in nnx.to_flat_state(state):
        value = variable.get_value()
        variable.set_value(value + jnp.asarray(scale * rng.randn(*value.shape), value.dtype))
    nnx.update(adaptation.model, state)


def source_and_target(seed: int = 1):
    """Right-padded sources [3, 9] and decoder inputs [3, 5] (the start token first) of digits."""
    rng = np.random.RandomState(seed)
    source, source_mask = padded_batch(rng, len(WORDS), [9, 4, 6])
    target, target_mask = padded_batch(rng, len(WORDS), [5, 2, 4])
    target[:, 0] = 0
    return source, source_mask, target, target_mask


def torch_logits(reference, source, source_mask, target, target_mask, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return reference(input_ids=torch.tensor(source), attention_mask=torch.tensor(source_mask),
                         decoder_input_ids=torch.tensor(target), decoder_attention_mask=torch.tensor(target_mask),
                         **kwargs).logits.numpy()


# -- the objective ----------------------------------------------------------------------------------------------


def test_the_loss_reads_the_prompt_in_the_encoder_and_the_shifted_target_as_pytorch(digits_t5):
    """The rows' prompt is what the tokenizer makes of prefix + input (</s> after it, no separator), the target its
    tokens and </s>; the smoothed loss of a batch (one padding row) is PyTorch's label-smoothed cross-entropy of
    transformers' T5 given those labels."""
    from tljax.data.batches import make_batch
    from tljax.data.pairs import PairDataset
    from tljax.data.prompts import PromptForm
    from tljax.train.seq2seq import PairSplit, TextToText, encode_pairs, source_forms

    tokenizer = transformers.AutoTokenizer.from_pretrained(digits_t5)
    pairs = PairDataset("tiny", ("3 1 4", "2 7", "9 9 1 5", "0"), ("3 1", "7 7 7", "5", "0 0"))
    form = source_forms([PromptForm(prefix="copy : ")], "t5")[0]
    rows = encode_pairs(pairs, tokenizer, form, 16, 5, source_length=16)
    for ids, start, text, target in zip(rows.ids, rows.extras["reply_start"], pairs.inputs, pairs.targets):
        assert ids[:start].tolist() == tokenizer("copy : " + text)["input_ids"]
        assert ids[start:].tolist() == tokenizer(target)["input_ids"]
    objective = TextToText(None, {"train": PairSplit(pairs, rows)}, PAD, 32, label_smoothing=0.1,
                           encoder_decoder=True)
    batch = objective.labelled(make_batch(rows, [0, 1, 2, 3], 5, PAD, 32))
    assert (batch["labels"][4] == -100).all() and batch["attention_mask"][4].sum() == 0
    model = T5ForConditionalGeneration.from_pretrained(digits_t5)
    loss = float(nnx.jit(lambda m, b: objective.loss(m, b, None)[0])(model, batch))
    reference = transformers.T5ForConditionalGeneration.from_pretrained(digits_t5).eval()
    labels = torch.tensor(batch["labels"][:4], dtype=torch.long)
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor(batch["input_ids"][:4], dtype=torch.long),
                           attention_mask=torch.tensor(batch["attention_mask"][:4]), labels=labels).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                 label_smoothing=0.1)
    assert loss == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("setting, message", [
    ("data.prompt_form=chat", "it has no chat template); set data.prompt_form: plain"),
    ("data.separator=;", "there is no separator between them; leave data.separator out"),
    ("method={name: feature-extraction}", "trains nothing of"),
])
def test_what_an_encoder_decoder_cannot_take_is_refused_in_one_line(tmp_path, digits_t5, capsys, setting, message):
    assert main(["--config", str(run_config(tmp_path, digits_t5)), "--set", setting]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and error.count("\n") == 0
    assert not (tmp_path / "run").exists()


def test_the_packaged_t5_config_parses():
    from tljax.train.config import load_config

    config = load_config(Path(__file__).parent.parent / "configs" / "seq2seq_t5.yaml")
    assert config.task == "seq2seq" and config.data.prompt_form == "plain" and config.data.separator == "\n"
    assert config.methods()[0] == {"name": "lora", "rank": 8, "alpha": 16, "dropout": 0.05}


# -- runs through the command -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory, digits_t5) -> Path:
    """The tiny T5 fully fine-tuned to copy 2-3 digits (300 steps of 32 pairs, 4 on each of the 8 simulated
    devices)."""
    root = tmp_path_factory.mktemp("t5-copy")
    assert main(["--config", str(run_config(root, digits_t5))]) == 0
    return root / "run"


def test_a_copy_task_is_learnt_exported_and_predicted(copy_run, capsys):
    from tljax.predict import load_predictor
    from tljax.predict import main as predict
    from tljax.runs import load_exported

    summary = json.loads((copy_run / "summary.json").read_text())
    test, before = summary["test"], summary["before"]["test"]
    assert test["exact"] >= 0.5 and before["exact"] == 0.0
    assert test["chrf"] > before["chrf"] + 40 and test["loss"] < before["loss"] / 2

    model, _, info = load_exported(copy_run / "export")
    assert info.seq2seq == {"prompt_form": "plain", "separator": "", "max_target_length": 5}
    loaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(copy_run / "export" / "model").eval()
    batch = source_and_target()
    real = batch[3] == 1
    np.testing.assert_allclose(np.asarray(forward(model, *map(jnp.asarray, batch)))[real],
                               torch_logits(loaded, *batch)[real], atol=1e-5, rtol=0)

    # the predictor asks in the form the run was taught: it writes what the run's last evaluation wrote
    shown = summary["examples"]
    outputs = load_predictor(copy_run)([example["input"] for example in shown])
    assert outputs == [example["output"] for example in shown]
    assert predict([str(copy_run), shown[0]["input"], shown[1]["input"]]) == 0
    assert capsys.readouterr().out.splitlines() == outputs[:2]


def test_a_multi_task_lora_run_exports_a_merged_t5_and_a_seq2seq_peft_adapter(tmp_path, digits_t5, capsys):
    """Two tasks told apart by their prefixes, LoRA on every attention (label smoothing on): scored per task, the
    merged Hugging Face T5 and the PEFT adapter give PyTorch the exported model's logits, predict asks a task."""
    from peft import AutoPeftModelForSeq2SeqLM

    from tljax.predict import load_predictor
    from tljax.predict import main as predict
    from tljax.runs import load_exported

    rows = [json.loads(line) for line in (digits_t5 / "pairs.jsonl").read_text().splitlines()]
    with (tmp_path / "first.jsonl").open("w") as handle:
        for row in rows[:400]:
            handle.write(json.dumps({"digits": row["digits"], "copy": row["digits"].split()[0]}) + "\n")
    tasks = [{"name": "copy", "source": str(digits_t5 / "pairs.jsonl"), "text_prefix": "copy : "},
             {"name": "first", "source": str(tmp_path / "first.jsonl"), "text_prefix": "first : "}]
    config = run_config(tmp_path, digits_t5, method={"name": "lora", "rank": 4, "alpha": 8}, max_steps=8,
                        eval_steps=8, label_smoothing=0.1)
    assert main(["--config", str(config), "--set", f"tasks={json.dumps(tasks)}"]) == 0
    assert "AutoPeftModelForSeq2SeqLM" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["test"]["tasks"]) == {"copy", "first"}

    export = tmp_path / "run" / "export"
    model, _, info = load_exported(export)
    assert info.seq2seq["tasks"] == {"copy": "copy : ", "first": "first : "}
    batch = source_and_target(2)
    real = batch[3] == 1
    ours = np.asarray(forward(model, *map(jnp.asarray, batch)))[real]
    merged = transformers.AutoModelForSeq2SeqLM.from_pretrained(export / "model").eval()
    np.testing.assert_allclose(torch_logits(merged, *batch)[real], ours, atol=1e-5, rtol=0)
    adapter = json.loads((export / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_2_SEQ_LM" and adapter["target_modules"] == ["k", "o", "q", "v"]
    peft_model = AutoPeftModelForSeq2SeqLM.from_pretrained(export / "adapter").eval()
    np.testing.assert_allclose(torch_logits(peft_model, *batch)[real], ours, atol=1e-5, rtol=0)

    generator = load_predictor(tmp_path / "run")
    assert generator.prefixes == {"copy": "copy : ", "first": "first : "}
    assert predict(["--task", "first", str(tmp_path / "run"), "3 1 4"]) == 0
    assert capsys.readouterr().out.splitlines() == generator(["3 1 4"], task="first")


# -- the methods' exports ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [PromptTuning(num_virtual_tokens=3, init="random"),
                                    PTuning(num_virtual_tokens=3, encoder_hidden_size=16)], ids=["prompt", "p-tuning"])
def test_a_soft_prompt_exports_as_peft_prompt_tuning_of_a_seq2seq_model(digits_t5, tmp_path, method):
    """PEFT's seq2seq prompt tuning with one transformer submodule puts the virtual tokens before the encoder's
    input only, where tljax puts them."""
    import peft

    adaptation = adapt(T5ForConditionalGeneration.from_pretrained(digits_t5), [method])
    perturb(adaptation)
    save_peft(adaptation, tmp_path / "adapter", base_model_name_or_path=str(digits_t5))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM" and config["num_transformer_submodules"] == 1
    reference = peft.PeftModel.from_pretrained(transformers.AutoModelForSeq2SeqLM.from_pretrained(digits_t5),
                                               tmp_path / "adapter").eval()
    batch = source_and_target()
    real = batch[3] == 1
    np.testing.assert_allclose(np.asarray(forward(adaptation.model, *map(jnp.asarray, batch)))[real],
                               torch_logits(reference, *batch)[real], atol=1e-5, rtol=0)


def test_prefix_tuning_gives_both_stacks_pytorchs_past_keys_and_values(digits_t5):
    """Each self-attention's prefix is what a PyTorch T5 computes with those keys and values as its past (their
    positions first): the encoder's blocks run with a cache holding the encoder's prefix, the decoder with an
    EncoderDecoderCache holding the decoder's (as PEFT feeds it) and no cross-attention prefix. Cached generation
    writes what recomputing every step writes."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    from tljax.models.t5.generate import generate

    adaptation = adapt(T5ForConditionalGeneration.from_pretrained(digits_t5), [PrefixTuning(num_virtual_tokens=3)])
    perturb(adaptation, which=nnx.Param)  # every weight: the random T5 would write padding only
    model = adaptation.model
    assert not hasattr(model.decoder.block[0].layer[1].EncDecAttention, "prefix")
    source, source_mask, target, target_mask = source_and_target()
    reference = transformers.T5ForConditionalGeneration.from_pretrained(digits_t5, attn_implementation="eager").eval()
    reference.load_state_dict({name: torch.tensor(array) for name, array in model_to_hf_tensors(model).items()
                               if "prefix" not in name}, strict=False)

    def past(stack) -> DynamicCache:
        cache = DynamicCache()
        for i, block in enumerate(stack.block):
            k, v = block.layer[0].SelfAttention.prefix(len(source))
            cache.update(torch.tensor(np.asarray(k)), torch.tensor(np.asarray(v)), i)
        return cache

    with torch.no_grad():
        encoder = reference.encoder
        hidden = encoder.embed_tokens(torch.tensor(source))
        keys_real = np.pad(source_mask, ((0, 0), (3, 0)), constant_values=1)
        mask = torch.tensor(np.where(keys_real[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min), dtype=torch.float32)
        cache, bias = past(model.encoder), None
        for block in encoder.block:
            hidden, bias, _ = block(hidden, mask, bias, past_key_values=cache)
        hidden = encoder.final_layer_norm(hidden)
        decoder_past = EncoderDecoderCache(past(model.decoder), DynamicCache())
        expected = reference(encoder_outputs=(hidden,), attention_mask=torch.tensor(source_mask),
                             decoder_input_ids=torch.tensor(target), past_key_values=decoder_past,
                             decoder_attention_mask=torch.tensor(np.pad(target_mask, ((0, 0), (3, 0)),
                                                                        constant_values=1))).logits.numpy()
    ours = np.asarray(forward(model, *map(jnp.asarray, (source, source_mask, target, target_mask))))
    real = target_mask == 1
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-5, rtol=0)

    cached = np.asarray(generate(model, source, source_mask, max_new_tokens=5, eos_token_ids=()).tokens)
    tokens = np.zeros((len(source), 6), np.int32)  # the start token, then what each step writes
    for step in range(5):  # every step recomputed without a cache (causal: the later slots do not count)
        logits = forward(model, jnp.asarray(source), jnp.asarray(source_mask), jnp.asarray(tokens))
        tokens[:, step + 1] = np.argmax(np.asarray(logits[:, step]), -1)
    np.testing.assert_array_equal(cached, tokens[:, 1:])
    assert len(set(cached.ravel().tolist())) > 2, "the perturbed model should write varied tokens"


def test_exports_that_pytorch_t5_has_no_place_for_are_refused_in_one_line(digits_t5, tmp_path, caplog):
    """A prefix (PEFT's seq2seq prefix reaches the decoder only) and BitFit's biases (a PyTorch T5's projections have
    none) are refused as PEFT adapters and as a Hugging Face directory; the run's own export keeps the biases."""
    from tljax.methods import MethodError
    from tljax.models import CheckpointError
    from tljax.runs import RunInfo, export_run, load_exported

    for methods, message in (([PrefixTuning(num_virtual_tokens=2)], "decoder's self-attention only"),
                             ([LoRA(rank=2), BitFit()], "has no place for")):
        adaptation = adapt(T5ForConditionalGeneration.from_pretrained(digits_t5), methods)
        with pytest.raises(MethodError, match=message) as error:
            save_peft(adaptation, tmp_path / "adapter", base_model_name_or_path=str(digits_t5))
        assert "\n" not in str(error.value) and not (tmp_path / "adapter").exists()

    adaptation = adapt(T5ForConditionalGeneration.from_pretrained(digits_t5), [BitFit()])
    biases = [p for p, _, rule in adaptation.rules().report(adaptation.model) if rule.trainable]
    # a bias on each projection of the blocks (4 per attention, 2 per feed-forward), none elsewhere
    assert len(biases) == 2 * (4 + 2) + 2 * (4 + 4 + 2)
    assert all(re.match(r"(encoder|decoder)/block/\d/layer/\d/\w+/\w+/bias$", p) for p in biases)
    perturb(adaptation)
    with pytest.raises(CheckpointError, match="has no biases") as error:
        adaptation.model.save_pretrained(tmp_path / "hf")
    assert "\n" not in str(error.value) and not (tmp_path / "hf").exists()
    expected = np.asarray(forward(adaptation.model, *map(jnp.asarray, source_and_target())))
    info = RunInfo(model=str(digits_t5), task="seq2seq", method=({"name": "bitfit"},), max_length=16)
    written = export_run(tmp_path / "export", adaptation.model, adaptation.methods, info, model_dir=digits_t5,
                         tokenizer=transformers.AutoTokenizer.from_pretrained(digits_t5))
    assert written == [str(tmp_path / "export" / "trainable.safetensors")]
    assert "no Hugging Face export: a Hugging Face T5ForConditionalGeneration has no biases" in caplog.text
    loaded, _, _ = load_exported(tmp_path / "export")
    np.testing.assert_array_equal(np.asarray(forward(loaded, *map(jnp.asarray, source_and_target()))), expected)


# -- layers and counts ------------------------------------------------------------------------------------------


def test_gradual_unfreezing_opens_both_stacks_top_blocks_together(digits_t5):
    """Step 0: what sits above the blocks (the final norms; T5 v1.0's output layer is the embeddings); then block 1
    of both stacks, block 0 of both, and the embeddings last."""
    adaptation = adapt(T5ForConditionalGeneration.from_pretrained(digits_t5),
                       [make_method("gradual-unfreezing", {"every": 10})])

    def trained_at(step: int) -> set[str]:
        return {p for p, _, rule in adaptation.rules(step).report(adaptation.model) if rule.trainable}

    assert trained_at(0) == {"encoder/final_layer_norm/weight", "decoder/final_layer_norm/weight"}
    blocks = {step: {m.group(0) for p in trained_at(step) if (m := re.match(r"\w+/block/\d", p))}
              for step in (10, 20)}
    assert blocks == {10: {"encoder/block/1", "decoder/block/1"},
                      20: {"encoder/block/1", "decoder/block/1", "encoder/block/0", "decoder/block/0"}}
    assert "shared/embedding" not in trained_at(20) and "shared/embedding" in trained_at(30)


def test_the_methods_table_counts_every_method_on_t5(digits_t5, capsys):
    from tljax.methods import METHODS
    from tljax.methods.__main__ import main as table
    from tljax.methods.__main__ import trainable_table

    rows = {name: count for name, count, _ in trainable_table(digits_t5)}
    assert set(rows) == set(METHODS) and rows["feature-extraction"] == 0
    # LoRA at rank 8 on q, k, v and o ([32, 32] each) of 2 blocks' self-attention in each stack and the decoder's
    # 2 cross-attentions
    assert rows["lora"] == 4 * (2 + 2 + 2) * 8 * (32 + 32)
    assert rows["prefix"] == 20 * (2 + 2) * 2 * 32  # 20 keys and values of width 32 for each self-attention
    assert table([str(digits_t5)]) == 0
    assert "| feature-extraction | 0 | 0.000% | trains a task head on frozen features" in capsys.readouterr().out
