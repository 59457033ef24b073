"""Our Flax NNX models, with Hugging Face names, and their registry by family and task."""

from __future__ import annotations

from pathlib import Path

from tljax.models.base import Layout, PretrainedModel, read_config_dict
from tljax.models.checkpoint import CheckpointError
from tljax.models.config import ConfigError
from tljax.models.decoder.config import DecoderConfig
from tljax.models.decoder.generate import chat, generate, stream_chat, stream_generate
from tljax.models.decoder.modeling import (
    KVCache,
    LlamaForCausalLM,
    LlamaForQuestionAnswering,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    LlamaModel,
)
from tljax.models.encoder.config import EncoderConfig
from tljax.models.encoder.modeling import (
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    cls_pool,
    mean_pool,
)
from tljax.models.roberta.config import RobertaConfig, XLMRobertaConfig
from tljax.models.roberta.modeling import (
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
    XLMRobertaForMaskedLM,
    XLMRobertaForQuestionAnswering,
    XLMRobertaForSequenceClassification,
    XLMRobertaForTokenClassification,
    XLMRobertaModel,
)
from tljax.models.gpt2.config import GPT2Config
from tljax.models.t5.config import T5Config
from tljax.models.t5.modeling import T5EncoderModel, T5ForConditionalGeneration, T5Model
from tljax.models.gpt2.modeling import (
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
)
from tljax.models.qwen2.config import Qwen2Config
from tljax.models.qwen2.modeling import (
    Qwen2ForCausalLM,
    Qwen2ForQuestionAnswering,
    Qwen2ForSequenceClassification,
    Qwen2ForTokenClassification,
    Qwen2Model,
)
from tljax.models.gemma3.config import Gemma3TextConfig
from tljax.models.gemma3.modeling import (
    Gemma3ForCausalLM,
    Gemma3TextForQuestionAnswering,
    Gemma3TextForSequenceClassification,
    Gemma3TextForTokenClassification,
    Gemma3TextModel,
)

# model_type -> task -> class
MODEL_CLASSES: dict[str, dict[str, type[PretrainedModel]]] = {
    "bert": {
        "base": BertModel,
        "sequence-classification": BertForSequenceClassification,
        "token-classification": BertForTokenClassification,
        "question-answering": BertForQuestionAnswering,
        "masked-lm": BertForMaskedLM,
    },
    "llama": {
        "base": LlamaModel,
        "sequence-classification": LlamaForSequenceClassification,
        "token-classification": LlamaForTokenClassification,
        "question-answering": LlamaForQuestionAnswering,
        "causal-lm": LlamaForCausalLM,
        "seq2seq": LlamaForCausalLM,  # text to text: the output written after the input (tljax.train.seq2seq)
    },
    "roberta": {
        "base": RobertaModel,
        "sequence-classification": RobertaForSequenceClassification,
        "token-classification": RobertaForTokenClassification,
        "question-answering": RobertaForQuestionAnswering,
        "masked-lm": RobertaForMaskedLM,
    },
    "xlm-roberta": {
        "base": XLMRobertaModel,
        "sequence-classification": XLMRobertaForSequenceClassification,
        "token-classification": XLMRobertaForTokenClassification,
        "question-answering": XLMRobertaForQuestionAnswering,
        "masked-lm": XLMRobertaForMaskedLM,
    },
    "gpt2": {
        "base": GPT2Model,
        "sequence-classification": GPT2ForSequenceClassification,
        "token-classification": GPT2ForTokenClassification,
        "question-answering": GPT2ForQuestionAnswering,
        "causal-lm": GPT2LMHeadModel,
        "seq2seq": GPT2LMHeadModel,  # text to text: the output written after the input (tljax.train.seq2seq)
    },
    "qwen2": {
        "base": Qwen2Model,
        "sequence-classification": Qwen2ForSequenceClassification,
        "token-classification": Qwen2ForTokenClassification,
        "question-answering": Qwen2ForQuestionAnswering,
        "causal-lm": Qwen2ForCausalLM,
        "seq2seq": Qwen2ForCausalLM,  # text to text: the output written after the input (tljax.train.seq2seq)
    },
    "gemma3_text": {
        "base": Gemma3TextModel,
        "sequence-classification": Gemma3TextForSequenceClassification,
        "token-classification": Gemma3TextForTokenClassification,
        "question-answering": Gemma3TextForQuestionAnswering,
        "causal-lm": Gemma3ForCausalLM,
        "seq2seq": Gemma3ForCausalLM,  # text to text: the output written after the input (tljax.train.seq2seq)
    },
    "t5": {
        "base": T5Model,
        "encoder": T5EncoderModel,
        "seq2seq-lm": T5ForConditionalGeneration,
        "seq2seq": T5ForConditionalGeneration,  # text to text: the encoder reads the input, the decoder writes the output
    },
}


def model_class(model_type: str, task: str) -> type[PretrainedModel]:
    """The class for a `config.json` model_type and a task, with an error listing what exists."""
    if model_type not in MODEL_CLASSES:
        raise ConfigError(f"model_type {model_type!r} is not supported; supported: {', '.join(MODEL_CLASSES)}")
    tasks = MODEL_CLASSES[model_type]
    if task not in tasks:
        raise ConfigError(f"task {task!r} is not available for {model_type!r} models; available: {', '.join(tasks)}")
    return tasks[task]


def task_of(cls: type) -> str | None:
    """The task a model class is registered for ("sequence-classification", "base", ...), or None."""
    return next((task for tasks in MODEL_CLASSES.values() for task, registered in tasks.items() if registered is cls),
                None)


def is_decoder(model_type: str) -> bool:
    """Whether a `config.json` model_type is a decoder that generates text (it has a causal-LM class)."""
    return "causal-lm" in MODEL_CLASSES.get(model_type, {})


def default_task(model_type: str) -> str:
    """The task a bare model directory is loaded for: the LM head of a decoder or an encoder-decoder, the backbone
    otherwise."""
    tasks = MODEL_CLASSES.get(model_type, {})
    return next((task for task in ("causal-lm", "seq2seq-lm") if task in tasks), "base")


def from_pretrained(directory: str | Path, task: str | None = None, **kwargs) -> PretrainedModel:
    """Loads a Hugging Face model directory as the right class for its model_type and `task`."""
    model_type = read_config_dict(Path(directory)).get("model_type", "")
    return model_class(model_type, task or default_task(model_type)).from_pretrained(directory, **kwargs)


__all__ = [
    "BertForMaskedLM", "BertForQuestionAnswering", "BertForSequenceClassification", "BertForTokenClassification", "BertModel", "CheckpointError", "ConfigError",
    "DecoderConfig", "EncoderConfig", "Gemma3ForCausalLM", "Gemma3TextConfig", "Gemma3TextForQuestionAnswering",
    "Gemma3TextForSequenceClassification", "Gemma3TextForTokenClassification", "Gemma3TextModel", "KVCache", "Layout", "LlamaForCausalLM", "LlamaForQuestionAnswering", "LlamaForSequenceClassification",
    "LlamaForTokenClassification", "LlamaModel", "MODEL_CLASSES", "PretrainedModel", "Qwen2Config", "Qwen2ForCausalLM",
    "Qwen2ForQuestionAnswering", "Qwen2ForSequenceClassification", "Qwen2ForTokenClassification", "Qwen2Model", "RobertaConfig", "RobertaForMaskedLM", "RobertaForQuestionAnswering",
    "RobertaForSequenceClassification", "RobertaForTokenClassification", "RobertaModel", "XLMRobertaConfig",
    "XLMRobertaForMaskedLM", "XLMRobertaForQuestionAnswering", "XLMRobertaForSequenceClassification",
    "XLMRobertaForTokenClassification", "XLMRobertaModel", "chat", "read_config_dict", "cls_pool", "default_task", "from_pretrained",
    "generate", "is_decoder", "mean_pool", "task_of", "model_class", "stream_chat", "stream_generate",
    "GPT2Config", "GPT2ForQuestionAnswering", "GPT2ForSequenceClassification", "GPT2ForTokenClassification",
    "GPT2LMHeadModel", "GPT2Model",
    "T5Config", "T5EncoderModel", "T5ForConditionalGeneration", "T5Model",
]
