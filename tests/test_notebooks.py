"""The notebooks (notebooks/en/, notebooks/pt/): the English ones executed top to bottom at the tiny budget, on tiny
random models, in one kernel; each Portuguese notebook with the English one's code cells, and no notebook committed
with outputs."""

import os
import re
from pathlib import Path

import nbformat
import pytest

from conftest import WORDS, save_word_tokenizer
from notebooks.run import execute, notebook_paths, with_execution_line, write_html

NUMBERS = ["01", "02", "03", "04", "05", "06"]


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}assistant {% endif %}")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """The tiny budget's models, as the kernel's environment names them: a random BERT (4 layers, so that
    partial fine-tuning has layers above the 3 it freezes; 512 positions, for question answering's 256-token
    windows) and a random Llama with a chat template, both with the tests' word-level tokenizer."""
    import transformers

    from tljax.models import BertModel, DecoderConfig, EncoderConfig, LlamaForCausalLM

    encoder = BertModel.from_config(EncoderConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=512), seed=0)
    decoder = LlamaForCausalLM.from_config(DecoderConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, max_position_embeddings=1024, tie_word_embeddings=True), seed=0)
    directories = {}
    for variable, model, bert in (("TLJAX_NOTEBOOK_MODEL", encoder, True), ("TLJAX_NOTEBOOK_DECODER", decoder, False)):
        directory = tmp_path_factory.mktemp("notebook-model")
        save_word_tokenizer(directory, bert=bert)
        model.save_pretrained(directory / "model")
        for item in (directory / "model").iterdir():  # beside the tokenizer, as a Hugging Face directory holds them
            item.rename(directory / item.name)
        directories[variable] = str(directory)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directories["TLJAX_NOTEBOOK_DECODER"])
    tokenizer.chat_template = CHAT_TEMPLATE  # the harness asks a decoder in its chat form
    tokenizer.save_pretrained(directories["TLJAX_NOTEBOOK_DECODER"])
    return directories


@pytest.mark.real  # reads the packaged Rotten Tomatoes corpus (fetched on first use, then cached)
def test_the_english_notebooks_run_at_the_tiny_budget(tiny_models, tmp_path):
    """Every cell of every English notebook, in order, without an error (a failing cell fails the test, naming its
    notebook and showing its traceback). One kernel runs them all: JAX and the models load once."""
    paths = notebook_paths("en")
    assert [path.name[:2] for path in paths] == NUMBERS
    executed = execute(paths, "tiny", tmp_path / "work", env={**tiny_models, "JAX_PLATFORMS": "cpu"},
                       shared_kernel=True, timeout=600)
    for path, notebook in zip(paths, executed):
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(cell.execution_count for cell in code), path.name  # every code cell ran
    outputs = {path.name[:2]: "".join(output.get("text", "") for cell in notebook.cells
                                      for output in cell.get("outputs", []))
               for path, notebook in zip(paths, executed)}
    # no library's Python warning reaches the reader (JAX's, transformers', tqdm's falling back to its text bar in a
    # kernel without ipywidgets); tljax's own log lines ("WARNING:tljax...") may
    warned = [(path.name, line) for path, notebook in zip(paths, executed) for cell in notebook.cells
              for output in cell.get("outputs", []) if output.get("name") == "stderr"
              for line in re.findall(r"\w+Warning: .*", output.get("text", ""))]
    assert not warned, warned
    assert "PyTorch:" in outputs["02"]  # the export loaded in PyTorch (torch is a test dependency)
    assert "=== prompt ===" in outputs["03"]  # the last of the methods it trains at the tiny budget
    # the HTML copies, as `python -m notebooks` writes them
    written = write_html(executed, paths, tmp_path / "html")
    assert [path.name for path in written] == [f"{path.stem}.html" for path in paths]
    assert "Pareto front" in written[2].read_text()
    # the template's style sheets once, beside the language folders, linked from every copy
    assert (tmp_path / "html" / "notebook.css").is_file()
    assert all('<link rel="stylesheet" href="../notebook.css">' in path.read_text() for path in written)
    assert written[1].read_text().count("training: 100%") == 3  # each progress bar once, as it ended
    # each copy says how it was executed (no time: the notebooks shared a kernel)
    assert all(f"Executed with <code>python -m notebooks --budget tiny</code> on {os.cpu_count()} CPU cores, "
               in path.read_text() for path in written)


def test_a_copy_says_at_which_budget_on_what_and_when_it_ran_in_its_language():
    page = '<html><head></head><body class="jp-Notebook">\n<main>\n<div>first cell</div></main></body></html>'
    on_cpu = {"budget": "full", "devices": 2, "device_kind": "CPU", "date": "2026-12-07", "seconds": 1510}
    portuguese = with_execution_line(page, on_cpu, "pt")
    line = re.search(r'<main>\n(<div class="[^"]*tljax-executed.*</div>)\n<div>first cell</div>', portuguese)
    assert line and portuguese == page.replace("<main>\n", f"<main>\n{line[1]}\n")  # first in the content
    assert ("<em>Executado com <code>python -m notebooks --budget full</code> em 2 núcleos de CPU, 25 min, "
            "2026-12-07.</em>") in line[1]
    on_gpu = {**on_cpu, "devices": 1, "device_kind": "NVIDIA H200", "seconds": 95}
    assert "Executed with <code>python -m notebooks --budget full</code> on 1 x NVIDIA H200, 95 s, 2026-12-07." in \
        with_execution_line(page, on_gpu, "en")
    assert with_execution_line(page, None, "en") == page  # a notebook executed elsewhere: nothing claimed
    # the Portuguese copy run after the English one in the same folder loads their runs and evaluations
    loaded = {**on_cpu, "seconds": 40, "loaded": 3}
    assert ("em 2 núcleos de CPU, 40 s, 2026-12-07. 3 de seus treinos e avaliações foram carregados de uma execução "
            "anterior do mesmo código na mesma pasta, não calculados de novo.</em>") in \
        with_execution_line(page, loaded, "pt")
    assert "on 2 CPU cores, 40 s, 2026-12-07. 3 of its runs and evaluations were loaded from an earlier execution " \
        "of the same code in the same folder, not computed again.</em>" in with_execution_line(page, loaded, "en")


def test_each_portuguese_notebook_has_the_english_code_cells_and_none_has_outputs():
    english, portuguese = notebook_paths("en"), notebook_paths("pt")
    assert [path.name[:2] for path in portuguese] == NUMBERS
    for en, pt in zip(english, portuguese):
        a, b = nbformat.read(en, as_version=4), nbformat.read(pt, as_version=4)
        assert [cell.cell_type for cell in a.cells] == [cell.cell_type for cell in b.cells], pt.name
        assert [cell.source for cell in a.cells if cell.cell_type == "code"] == \
               [cell.source for cell in b.cells if cell.cell_type == "code"], pt.name
        translated = [(x.source, y.source) for x, y in zip(a.cells, b.cells) if x.cell_type == "markdown"]
        assert all(x != y for x, y in translated), f"{pt.name}: a text cell left in English"
    for path in sorted(Path(notebook_paths("en")[0]).parents[1].glob("**/*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":  # committed without outputs: a diff shows only what was written
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: a cell has outputs"
        assert "widgets" not in notebook.metadata, f"{path.name}: saved widget state"
