"""A base decoder taught a chat format (`chat.template`): named and Jinja templates, the refusal of a run with no
format to teach, the end of turn a taught reply ends with, and the run's export carrying the template, so that the
harness and `tljax.predict` ask the tuned model in the form it was taught (on the tiny decoder fixtures; Gemma's
own tokens: tests/test_gemma3_real.py)."""

import json

import numpy as np
import pytest
import yaml

from conftest import write_reviews
from tljax.data.chat import CHAT_TEMPLATES, GEMMA_TEMPLATE, chat_context, resolve_template
from tljax.data.dataset import DataError

# A turn format in the tiny word vocabulary: "story" opens a user turn, "plot" the model's, the special [SEP] ends
# each turn (the tiny tokenizer's end of sequence, a special token, as Gemma's <end_of_turn> is)
TEMPLATE = ("{% for m in messages %}{{ 'story' if m['role'] == 'user' else 'plot' }} {{ m['content'] }} [SEP] "
            "{% endfor %}{% if add_generation_prompt %}plot {% endif %}")
INSTRUCTION = "the film was {text}"  # the template the harness's tiny task asks with (test_harness.write_task)


def tokenizer_of(directory, template=None):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def test_a_template_is_named_or_jinja_and_anything_else_is_refused_naming_both():
    from tljax.train.config import ChatConfig, ConfigKeyError

    assert resolve_template("gemma") == GEMMA_TEMPLATE == CHAT_TEMPLATES["gemma"]
    assert resolve_template(TEMPLATE) == TEMPLATE
    with pytest.raises(DataError, match=r"'gema' is neither a named chat template \(gemma\) nor a Jinja template"):
        resolve_template("gema")
    with pytest.raises(ConfigKeyError, match=r"^chat.template: 'gema' is neither .*\(gemma\)"):
        ChatConfig(instruction=INSTRUCTION, verbalisers={"neg": "bad", "pos": "good"}, template="gema")
    assert ChatConfig(instruction=INSTRUCTION, verbalisers={"neg": "bad"}, template="gemma").template == "gemma"


def test_the_gemma_template_writes_gemmas_turns(tiny_base_decoder):
    tokenizer = tokenizer_of(tiny_base_decoder, resolve_template("gemma"))
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is it good? "},
                    {"role": "assistant", "content": "yes"}, {"role": "user", "content": "And this?"}]
    # no BOS: the tiny tokenizer has none (Gemma's <bos> comes first: tests/test_gemma3_real.py)
    assert chat_context(tokenizer, conversation) == (
        "<start_of_turn>user\nBe brief.\n\nIs it good?<end_of_turn>\n<start_of_turn>model\nyes<end_of_turn>\n"
        "<start_of_turn>user\nAnd this?<end_of_turn>\n<start_of_turn>model\n")


def test_the_end_of_turn_is_the_special_token_after_a_reply(tiny_decoder, tiny_base_decoder):
    from tljax.models import LlamaForCausalLM
    from tljax.models.decoder.generate import reply_ends, turn_end_ids

    assert turn_end_ids(tokenizer_of(tiny_base_decoder)) == ()  # no template
    assert turn_end_ids(tokenizer_of(tiny_decoder)) == ()  # its turns end with a space: no special token
    tokenizer = tokenizer_of(tiny_base_decoder, TEMPLATE)
    assert turn_end_ids(tokenizer) == (tokenizer.convert_tokens_to_ids("[SEP]"),)
    model = LlamaForCausalLM.from_pretrained(tiny_base_decoder)
    # a free reply stops at the model's end of sequence or at the format's end of turn
    assert reply_ends(model, tokenizer) == (*model.config.eos_token_ids, 3)


def chat_config(tmp_path, model, template=None, output="chat") -> tuple:
    reviews = write_reviews(tmp_path / "reviews.csv")
    data = {"source": str(reviews), "text_column": "review", "label_column": "sentiment"}
    chat = {"instruction": INSTRUCTION, "verbalisers": {"neg": "bad", "pos": "good"}}
    config = tmp_path / f"{output}.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(model), "task": "causal-lm", "data": {**data, "labels": ["neg", "pos"], "max_length": 32},
        "chat": {**chat, "template": template} if template else chat,
        "method": {"name": "lora", "rank": 4}, "output_dir": str(tmp_path / output),
        "training": {"learning_rate": 3e-2, "max_steps": 80, "eval_steps": 40, "per_device_train_batch_size": 16,
                     "warmup_ratio": 0.0}}))
    return config, data


def test_a_chat_run_on_a_base_decoder_without_a_template_is_refused_in_one_line(tmp_path, tiny_base_decoder,
                                                                               capsys):
    from tljax.train.__main__ import main as train

    config, _ = chat_config(tmp_path, tiny_base_decoder)
    assert train(["--config", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "has no chat template" in error and "set chat.template (gemma" in error, error
    assert not (tmp_path / "chat").exists()  # refused before anything was written


def test_a_base_decoder_taught_a_turn_format_keeps_it_in_its_export_and_is_asked_in_it(tmp_path, tiny_base_decoder):
    """Trained in TEMPLATE's turns, each reply ended with its [SEP]; the export carries the template (run.json, the
    Hugging Face directory, the PEFT adapter), so that the harness and tljax.predict ask in that form: without it
    they would find no template at all (the base has none)."""
    from harness.tasks import load_task
    from harness.variants import Models, evaluate, parse_variant
    from test_harness import write_task
    from tljax.data import TextDataset
    from tljax.predict import ChatClassifier, load_predictor
    from tljax.runs import load_exported
    from tljax.train.__main__ import main as train
    from tljax.train.chat import encode_chat
    from tljax.train.config import ChatConfig

    config, data = chat_config(tmp_path, tiny_base_decoder, TEMPLATE)
    assert train(["--config", str(config)]) == 0
    export = tmp_path / "chat" / "export"
    info = json.loads((export / "run.json").read_text())
    assert info["chat"]["template"] == TEMPLATE
    for copy in ("model", "adapter"):  # what PyTorch users load: the same turns
        assert tokenizer_of(export / copy).chat_template == TEMPLATE, copy
    _, tokenizer, _ = load_exported(export)
    assert tokenizer.chat_template == TEMPLATE

    # the reply taught is the label's word and the end of turn
    settings = ChatConfig(instruction=INSTRUCTION, verbalisers={"neg": "bad", "pos": "good"}, template=TEMPLATE)
    rows = encode_chat(TextDataset("x", ("the film was",), (0,), ("neg", "pos")), settings, tokenizer, 32)
    assert tokenizer.convert_ids_to_tokens(rows.ids[0][rows.extras["reply_start"][0]:].tolist()) == ["bad", "[SEP]"]

    task = load_task(write_task(tmp_path, {**data, "split": "test"}))
    tuned = evaluate(parse_variant({"kind": "run", "run": str(tmp_path / "chat")}), task, task.items, 0, Models())
    item = task.items[0]
    assert tuned.records[0]["prompt"] == f"story the film was {item.text} [SEP] plot "  # the taught form
    harness = np.asarray([r["prediction"]["acc"] for r in tuned.records])
    gold = np.asarray([r["gold"] for r in tuned.records])
    assert (harness == gold).mean() > 0.75, (harness == gold).mean()

    predictor = load_predictor(tmp_path / "chat")
    assert isinstance(predictor, ChatClassifier)
    predicted = predictor([i.text for i in task.items])
    labels = np.asarray([task.labels.index(label) for label, _ in predicted])
    assert (labels == gold).mean() > 0.75
    # the same form as the harness's: the reply's end of turn is the only difference, and rarely changes an answer
    assert (labels == harness).mean() >= 0.9
    assert all(abs(sum(p.values()) - 1) < 1e-6 for _, p in predicted)
