"""The app on entity tasks: entities marked in their text, a tagger's answers through the page, an NER run
started from the page, entity results and their explorer (tiny models; the real ones: tests/test_app_real.py)."""

import json
import shutil
import time
from pathlib import Path

import yaml
from gradio_client import handle_file

from conftest import write_reviews


def test_entities_are_marked_in_their_text_by_type_with_the_score_on_hover():
    from harness.app.highlight import entity_html, type_colour

    text = "Ana <b> & Rui met at Recife"
    shown = entity_html(text, [{"start": 21, "end": 27, "label": "LOC", "score": 0.875},
                               {"start": 0, "end": 3, "label": "PER", "score": None},
                               {"start": 1, "end": 5, "label": "ORG", "score": 0.5}])  # overlaps: not drawn
    assert shown.count("<mark") == 2 and 'title="LOC · score 0.88"' in shown and 'title="PER"' in shown
    assert "&lt;b&gt; &amp; Rui" in shown and "<b>" not in shown  # the text is escaped
    assert type_colour("LOC") in shown and type_colour("ORG") not in shown.split("entity-legend")[0]
    assert type_colour("LAW") == type_colour("LAW") and entity_html("no entities", []).count("<mark") == 0


def _entity_task_file(folder: Path, source: Path) -> str:
    task = {"name": "tiny-entities", "kind": "entities", "data": {"source": str(source), "split": "test"},
            "labels": ["PER", "LOC"],
            "templates": {"en": {"instruction": "entities of {text}", "types": {"PER": "good", "LOC": "bad"}}}}
    path = folder / "tiny-entities.yaml"
    path.write_text(yaml.safe_dump(task))
    return str(path)


def test_the_page_shows_a_taggers_entities_trains_one_and_explores_entity_results(tiny_page, tiny_model, tagger,
                                                                                  tmp_path):
    client, service, settings = tiny_page
    folder, _ = tagger
    shutil.copytree(folder / "run", settings.runs[0] / "tiny-ner")
    task = _entity_task_file(tmp_path, folder / "tagged.jsonl")
    choices = {c.name: c for c in service.choices(str(tiny_model))}
    name = next(n for n, c in choices.items() if c.run and c.run.path.name == "tiny-ner")
    assert [n for n, c in choices.items() if service.fits(c, task)] == ["few-shot k=8", name]
    message = "the plot was good in awful"
    history, label, tag, view = client.predict(str(tiny_model), task, "en", name, message, [], api_name="/answer_1")
    answer = service.answer(choices[name], task, "en", message)
    assert not label and "latency" in tag and answer.label in json.dumps(history[-1]["content"])
    assert answer.entities and view.count("<mark") == len(answer.entities)
    for entity in answer.entities:
        assert f'data-type="{entity["label"]}" title="{entity["label"]} · score {entity["score"]:.2f}"' in view
    _, _, tag, view = client.predict(str(tiny_model), task, "en", "zero-shot", message, [], api_name="/answer_2")
    assert "does not answer the task" in tag and view == ""
    # the blind comparison on the built-in NER task needs two variants that tag its five types
    *_, notice = client.predict(str(tiny_model), "ner", api_name="/draw")
    assert "needs two variants" in notice

    # a tagging run started from the page on a JSON Lines file of spans (a CSV-only column check is skipped)
    upload = handle_file(str(folder / "tagged.jsonl"))
    assert client.predict(upload, "token-classification", api_name="/columns_of")[2]["value"] == "upload"
    status, _ = client.predict(str(tiny_model), "lora", "token-classification", "upload", upload, "text", "label",
                               "", 4, "ner-from-page", api_name="/train_start")
    assert "ner-from-page" in status, status
    deadline, state = time.time() + 300, client.predict("ner-from-page", api_name="/train_state")
    while state["state"] == "running" and time.time() < deadline:
        time.sleep(1)
        state = client.predict("ner-from-page", api_name="/train_state")
    assert state["state"] == "finished", state
    trained = next(c for c in service.choices(str(tiny_model)) if c.run and c.run.path.name == "ner-from-page")
    assert trained.run.task == "token-classification" and service.fits(trained, task)
    status, _ = client.predict(str(tiny_model), "lora", "token-classification", "upload",
                               handle_file(str(tiny_runs_csv(settings))), "text", "label", "", 4, "ner-bad",
                               api_name="/train_start")
    assert status.startswith("⚠️") and "neither a tagged corpus nor a file" not in status

    # an entity suite's results: their own table, and the explorer lists the entities each variant found
    out = settings.results[0] / "entities"
    (out / "predictions").mkdir(parents=True)
    row = {"variant": "tagger", "kind": "run", "task": "ner-en", "task_kind": "entities", "language": "en",
           "settings": {"kind": "run", "run": str(folder / "run")}, "metric": "entity F1", "score": 0.8,
           "summary": {"items": 2, "unread": 0, "entity": {"f1": 0.8, "precision": 0.75, "recall": 0.857,
                                                           "f1_ci": [0.6, 0.95]}},
           "costs": {"trainable_parameters": 2213}}
    (out / "results.json").write_text(json.dumps({"suite": "entities", "rows": [row, {**row, "variant": "other"}],
                                                   "agreement": {}}))
    for variant, found in (("tagger", [[0, 3, "PER"]]), ("other", [])):
        (out / "predictions" / f"{variant}__ner-en__seed0.jsonl").write_text(json.dumps(
            {"id": "d/0", "text": "Ana in Recife", "gold": [[0, 3, "PER"], [7, 13, "LOC"]], "predicted": found}) + "\n")
    outputs = client.predict(None, None, None, "entities", api_name="/results_view")
    assert outputs[5]["data"][0][:8] == ["entities", "tagger", str(tiny_model), "ner-en", "en", 2, 0.8, "0.600-0.950"]
    assert not [r for r in outputs[4]["data"] if r[0] == "entities"]  # not in the classification table
    client.predict("entities", "ner-en", api_name="/explorer_variant_choices")
    table = client.predict("entities", "ner-en", ["tagger", "other"], api_name="/explore")
    assert table["value"]["data"] == [["d/0", "Ana in Recife", "PER: Ana; LOC: Recife", "PER: Ana", "-"]]


def tiny_runs_csv(settings) -> Path:
    """A CSV of reviews: not a file a tagging run reads."""
    path = settings.runs[0].parent / "not-tagged.csv"
    write_reviews(path, n=8)
    return path
