"""A scripted InferenceService and ModelLister, to test the HTTP layer without a model.

The prompt text picks the script:
  "abort:CODE:message"   abort with that gRPC status before any token
  "fail-after-tokens"    two deltas, then INTERNAL
  "hang"                 one delta, then wait until cancelled
  "flood"                4 KB deltas without end, until cancelled
  "slow"                 the echo of "slow answer", 0.3 s between deltas
  "summary:REASON"       no tokens, a summary with that finish reason
  anything else          one delta per word, then STOP with usage
"""

from __future__ import annotations

import asyncio
import dataclasses

import grpc

from lorafleet.dataplane.openai_http import ModelCard
from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from lorafleet.runtime.rpcserver import ServiceBinding, full_name, start_server

BASE = "tiny-base"


class ScriptedInference(pb_grpc.InferenceServiceServicer):
    """Records each request and its metadata; answers by script."""

    def __init__(self):
        self.requests: list[pb.GenerateRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.cancelled = asyncio.Event()

    async def Generate(self, request, context):
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        text = request.text or " ".join(m.content for m in request.chat.messages)
        if text.startswith("abort:"):
            _, code, message = text.split(":", 2)
            await context.abort(grpc.StatusCode[code], message)
        if text.startswith("summary:"):
            reason = pb.FinishReason.Value(text.split(":", 1)[1])
            yield pb.GenerateResponse(summary=pb.GenerateSummary(finish_reason=reason))
            return
        if text == "flood":
            async for message in self._flood():
                yield message
            return
        if text in ("fail-after-tokens", "hang"):
            async for message in self._failing(text, context):
                yield message
            return
        for message in _echo(request, "slow answer" if text == "slow" else text):
            yield message
            if text == "slow":
                await asyncio.sleep(0.3)

    async def _flood(self):
        try:
            while True:
                yield pb.GenerateResponse(delta=pb.TokenDelta(token_ids=[5], text="x" * 4096))
                await asyncio.sleep(0)
        finally:  # it never ends by itself: cancelled, or closed at a yield (GeneratorExit)
            self.cancelled.set()

    async def _failing(self, text, context):
        yield pb.GenerateResponse(delta=pb.TokenDelta(token_ids=[5], text="partial "))
        if text == "hang":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        yield pb.GenerateResponse(delta=pb.TokenDelta(token_ids=[6], text="more"))
        await context.abort(grpc.StatusCode.INTERNAL, "the engine process died")


def _echo(request: pb.GenerateRequest, text: str):
    words = text.split()
    want = request.sampling.HasField("logprobs")
    for index, word in enumerate(words):
        delta = pb.TokenDelta(token_ids=[100 + index], text=word + " ")
        if want:
            delta.logprobs.add(token_id=100 + index, logprob=-0.5,
                               top=[pb.TopLogprob(token_id=7, logprob=-1.0)])
        yield pb.GenerateResponse(delta=delta)
    yield pb.GenerateResponse(summary=pb.GenerateSummary(
        finish_reason=pb.FINISH_REASON_STOP,
        usage=pb.Usage(prompt_tokens=3, completion_tokens=len(words)),
        adapter_version=f"{request.adapter}@7" if request.adapter else "",
        worker_id="fake-worker", request_id=request.request_id))


@dataclasses.dataclass
class FakeModels:
    """A ModelLister with a fixed list."""

    cards: list[ModelCard]

    async def list_models(self, metadata=()) -> list[ModelCard]:
        return self.cards


async def start_scripted():
    """A gRPC server with ScriptedInference (and health) on a free port."""
    servicer = ScriptedInference()
    server = await start_server([ServiceBinding(
        pb_grpc.add_InferenceServiceServicer_to_server, servicer,
        full_name(pb, "InferenceService"))])
    return server, servicer
