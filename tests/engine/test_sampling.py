"""Sampling through the whole engine: seeds, stop strings, abort, logprobs."""

from __future__ import annotations

import pytest
import torch

from lorafleet.dataplane.engine.params import InvalidParamsError, SamplingParams
from lorafleet.dataplane.engine.request import FinishReason
from lorafleet.dataplane.server.tokenizer import Tokenizer
from tests.engine.conftest import make_prompts
from tests.engine.drive import (
    GREEDY,
    make_engine,
    run_all,
    run_detokenized,
    text_of,
    tokens_of,
)

SEEDED = SamplingParams(max_tokens=16, temperature=0.9, top_k=40, top_p=0.9, seed=1234,
                        ignore_eos=True)


@pytest.fixture(scope="module")
def llama(checkpoints):
    return checkpoints("llama-gqa")


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(llama):
    prompt = make_prompts((9,))[0]
    alone = make_engine(llama)
    alone.add_request("x", prompt, params=SEEDED)
    reference = tokens_of(run_all(alone)["x"])

    crowded = make_engine(llama, max_num_batched_tokens=16)
    others = make_prompts((30, 4, 17, 22))
    for i, other in enumerate(others):
        crowded.add_request(f"o{i}", other, params=SamplingParams(
            max_tokens=10 + i, temperature=1.3, seed=i, ignore_eos=True))
    crowded.add_request("x", prompt, params=SEEDED)
    crowded.add_request("greedy", others[0], params=GREEDY)
    assert tokens_of(run_all(crowded)["x"]) == reference

    other_seed = make_engine(llama)
    other_seed.add_request("x", prompt, params=SamplingParams(**{**vars(SEEDED), "seed": 99}))
    assert tokens_of(run_all(other_seed)["x"]) != reference


def test_stop_string_cuts_the_text_exactly(llama):
    """The frontend's detokenizer ends the request at the token that completed the stop
    string: text, tokens and usage stop there, and the engine frees the request."""
    prompt = make_prompts((6,))[0]
    tokenizer = Tokenizer.from_dir(llama)
    free = make_engine(llama)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    free_outputs = run_detokenized(free, tokenizer, "r", prompt, params)
    full, free_tokens = text_of(free_outputs), tokens_of(free_outputs)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), "the test needs visible text in the middle"
    cut = make_engine(llama)
    outputs = run_detokenized(cut, tokenizer, "r", prompt,
                              SamplingParams(**{**vars(params), "stop": (stop,)}))
    assert text_of(outputs) == full[: full.index(stop)]
    assert outputs[-1].finish_reason is FinishReason.STOP
    assert outputs[-1].stop_string == stop
    tokens = tokens_of(outputs)
    assert tokens == free_tokens[: len(tokens)] and len(tokens) < len(free_tokens)
    assert outputs[-1].usage.num_output_tokens == len(tokens)
    assert cut.allocator.num_used_blocks == 0 and not cut.has_unfinished()


def test_abort_mid_generation_returns_every_block(llama):
    engine = make_engine(llama, max_num_batched_tokens=16)
    for i, prompt in enumerate(make_prompts()):
        engine.add_request(f"r{i}", prompt, params=SamplingParams(max_tokens=50, ignore_eos=True))
    for _ in range(6):
        engine.step()
    assert engine.stats().num_running > 0 and engine.stats().num_waiting > 0
    for i in range(8):
        assert engine.abort(f"r{i}")
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks
    final = engine.step()
    assert {o.request_id for o in final} == {f"r{i}" for i in range(8)}
    assert all(o.finish_reason is FinishReason.CANCELLED for o in final)
    assert not engine.has_unfinished()
    assert not engine.abort("r0")


def test_logprobs_match_transformers(llama):
    import transformers

    prompt = make_prompts((11,))[0]
    engine = make_engine(llama)
    engine.add_request("r", prompt, params=SamplingParams(max_tokens=6, temperature=0.0,
                                                          logprobs=5, ignore_eos=True))
    logprobs = [lp for out in run_all(engine)["r"] for lp in out.logprobs]
    model = transformers.AutoModelForCausalLM.from_pretrained(llama, dtype=torch.float32)
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    for step, got in enumerate(logprobs):
        expected = torch.log_softmax(ref.logits[step][0].float(), dim=-1)
        top = expected.topk(5)
        assert got.token_id == ref.sequences[0, len(prompt) + step].item()
        assert got.logprob == pytest.approx(expected[got.token_id].item(), abs=1e-4)
        assert [t.token_id for t in got.top] == top.indices.tolist()
        assert [t.logprob for t in got.top] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_max_tokens_and_eos_finish_with_the_right_reason(llama):
    engine = make_engine(llama)
    prompt = make_prompts((5,))[0]
    engine.add_request("len", prompt, params=SamplingParams(max_tokens=3, ignore_eos=True))
    first = tokens_of(run_all(make_greedy_one(llama, prompt))["g"])[0]
    engine.add_request("stop", prompt, params=SamplingParams(
        max_tokens=9, temperature=0.0, stop_token_ids=[first]))
    outputs = run_all(engine)
    assert outputs["len"][-1].finish_reason is FinishReason.LENGTH
    assert outputs["len"][-1].usage.num_output_tokens == 3
    assert tokens_of(outputs["stop"]) == [first]
    assert outputs["stop"][-1].finish_reason is FinishReason.STOP
    timings = outputs["len"][-1].timings
    assert timings.arrival <= timings.first_scheduled <= timings.first_token


def make_greedy_one(directory, prompt):
    engine = make_engine(directory)
    engine.add_request("g", prompt, params=GREEDY)
    return engine


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", 0), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("top_k", 0),
    ("seed", -1), ("stop", [""]), ("stop_token_ids", [-3]), ("logprobs", 21),
])
def test_bad_sampling_params_name_the_field(field, value):
    with pytest.raises(InvalidParamsError, match=field):
        SamplingParams(**{field: value})


def test_stop_given_as_one_string_is_refused():
    with pytest.raises(InvalidParamsError, match="not one string"):
        SamplingParams(stop="end")
