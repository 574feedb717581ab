"""Typed errors, request building, stream events and the retry policy, with no server."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from lorafleet.clients.errors import (
    ERRORS,
    Internal,
    InvalidArgument,
    LorafleetError,
    NotFound,
    error_for,
)
from lorafleet.clients.events import (
    CompletionBuilder,
    FinishReason,
    Summary,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    event_of,
)
from lorafleet.clients.requests import generate_request
from lorafleet.clients.retry import Deadline, RetryPolicy
from lorafleet.inference.v1 import inference_service_pb2 as pb


def test_importing_the_client_does_not_import_torch():
    code = "import sys, lorafleet.clients; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_each_status_code_has_one_error_class():
    expected = {"NOT_FOUND", "INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED",
                "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED",
                "FAILED_PRECONDITION", "ALREADY_EXISTS", "INTERNAL"}
    assert {code.name for code in ERRORS} == expected
    for code, cls in ERRORS.items():
        error = error_for(code, "why")
        assert type(error) is cls and isinstance(error, LorafleetError)
        assert (error.code, error.message, str(error)) == (code, "why", f"{code.name}: why")
    assert NotFound("gone").code == grpc.StatusCode.NOT_FOUND


def test_a_code_without_a_class_keeps_its_code_on_the_base_error():
    error = error_for(grpc.StatusCode.CANCELLED, "stopped")
    assert type(error) is LorafleetError and error.code == grpc.StatusCode.CANCELLED


def test_request_takes_exactly_one_prompt_form():
    assert generate_request("hi").text == "hi"
    assert list(generate_request(token_ids=[3, 4]).token_ids.ids) == [3, 4]
    chat = generate_request(messages=[{"role": "system", "content": "be brief"}, ("user", "hi")])
    assert [(m.role, m.content) for m in chat.chat.messages] == [("system", "be brief"),
                                                                 ("user", "hi")]
    with pytest.raises(InvalidArgument, match="got prompt, token_ids"):
        generate_request("hi", token_ids=[1])
    with pytest.raises(ValueError, match="got none"):  # InvalidArgument is a ValueError
        generate_request()
    with pytest.raises(InvalidArgument, match=r"messages\[1\]"):
        generate_request(messages=[("user", "hi"), {"role": "user"}])


def test_unset_sampling_arguments_stay_unset():
    request = generate_request("hi", adapter="acme/a@2", max_tokens=5, temperature=0.0,
                               stop="END", seed=7, routing_key="user-1", request_id="r1")
    sampling = request.sampling
    assert sampling.HasField("temperature") and sampling.temperature == 0.0
    assert not sampling.HasField("top_p") and not sampling.HasField("logprobs")
    assert list(sampling.stop) == ["END"] and sampling.seed == 7 and sampling.max_tokens == 5
    assert (request.adapter, request.routing_key, request.request_id) == ("acme/a@2",
                                                                          "user-1", "r1")
    with pytest.raises(InvalidArgument, match="max_tokens"):
        generate_request("hi", max_tokens=-1)


def test_stream_messages_become_typed_events():
    delta = pb.GenerateResponse(delta=pb.TokenDelta(token_ids=[7], text="a", logprobs=[
        pb.TokenLogprob(token_id=7, logprob=-0.5, top=[pb.TopLogprob(token_id=8, logprob=-1.5)])
    ]))
    assert event_of(delta) == TokenEvent((7,), "a", (TokenLogprob(7, -0.5, (TopLogprob(8, -1.5),)),))
    message = pb.GenerateResponse(summary=pb.GenerateSummary(
        finish_reason=pb.FINISH_REASON_STOP, usage=pb.Usage(prompt_tokens=4, completion_tokens=1),
        adapter_version="acme/a@2", adapter_digest="ab" * 32, worker_id="w1", request_id="r1"))
    message.summary.timings.time_to_first_token.FromMilliseconds(250)
    summary = event_of(message)
    assert isinstance(summary, Summary) and summary.finish_reason is FinishReason.STOP
    assert summary.finish_reason == "stop" and summary.time_to_first_token == 0.25
    assert (summary.num_prompt_tokens, summary.num_completion_tokens) == (4, 1)
    assert (summary.adapter_version, summary.worker_id, summary.request_id) == ("acme/a@2",
                                                                                "w1", "r1")


def test_a_stream_without_a_summary_is_an_internal_error():
    builder = CompletionBuilder()
    builder.add(TokenEvent((1,), "x"))
    with pytest.raises(Internal, match="without a summary"):
        builder.build()


def test_retry_policy_backs_off_within_its_ceiling_and_only_on_unavailable():
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=0.3)
    unavailable = error_for(grpc.StatusCode.UNAVAILABLE, "")
    no_deadline = Deadline(None)
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (3, 0.3)):
        pauses = [policy.pause_before_retry(unavailable, attempt, is_started=False,
                                            deadline=no_deadline) for _ in range(50)]
        assert all(0 <= p <= ceiling for p in pauses) and len(set(pauses)) > 1  # jittered
    assert policy.pause_before_retry(unavailable, 4, is_started=False, deadline=no_deadline) is None
    assert policy.pause_before_retry(unavailable, 1, is_started=True, deadline=no_deadline) is None
    not_found = error_for(grpc.StatusCode.NOT_FOUND, "")
    assert policy.pause_before_retry(not_found, 1, is_started=False, deadline=no_deadline) is None
    spent = Deadline(0.0)
    assert policy.pause_before_retry(unavailable, 1, is_started=False, deadline=spent) is None
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
