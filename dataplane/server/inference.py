"""InferenceService on a worker: a thin translation between protos and `Worker`."""

from __future__ import annotations

import time

import grpc
from google.protobuf import duration_pb2

from lorafleet.dataplane.engine.outputs import RequestOutput
from lorafleet.dataplane.engine.request import FinishReason
from lorafleet.dataplane.server.requests import cache_salt_of, prompt_of, sampling_of
from lorafleet.dataplane.server.tracing import context_from_metadata
from lorafleet.dataplane.server.worker import Admitted, Worker
from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.inference.v1 import inference_service_pb2_grpc as pb_grpc
from lorafleet.runtime.error_status import stream_errors

_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
}


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Streams completions from the worker's engine."""

    def __init__(self, worker: Worker):
        self._worker = worker

    @stream_errors
    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        prompt, params = prompt_of(request), sampling_of(request)
        cache_salt = cache_salt_of(request)
        admitted = self._worker.admit(request.request_id, request.adapter)
        try:
            token_ids = await self._worker.frontend.token_ids(prompt, params)
        except BaseException:
            self._worker.release(admitted)
            raise
        parent = context_from_metadata(context.invocation_metadata())
        async for output in self._worker.generate(admitted, token_ids, params,
                                                  cache_salt=cache_salt, trace_parent=parent):
            if output.new_token_ids or output.text:
                yield pb.GenerateResponse(delta=_delta(output))
            if output.is_finished:
                yield pb.GenerateResponse(summary=self._summary(admitted, output))

    def count_error(self, code: grpc.StatusCode) -> None:
        """Counts a Generate that ended with error status `code` (see stream_errors)."""
        self._worker.metrics.record_rejected(code)

    def _summary(self, admitted: Admitted, output: RequestOutput) -> pb.GenerateSummary:
        entry, timings = admitted.entry, output.timings
        summary = pb.GenerateSummary(
            finish_reason=_FINISH[output.finish_reason],
            usage=pb.Usage(prompt_tokens=output.usage.num_prompt_tokens,
                           completion_tokens=output.usage.num_output_tokens,
                           cached_tokens=output.usage.num_cached_tokens),
            adapter_version=entry.label if entry else "",
            adapter_digest=entry.digest if entry else "",
            matched_stop=output.stop_string or "",
            error_message=output.error or "",
            worker_id=self._worker.config.worker_id,
            request_id=admitted.caller_id,
        )
        _set_duration(summary.timings.queued, timings.first_scheduled, timings.arrival)
        _set_duration(summary.timings.time_to_first_token, timings.first_token, timings.arrival)
        _set_duration(summary.timings.total, time.monotonic(), timings.arrival)
        return summary


def _delta(output: RequestOutput) -> pb.TokenDelta:
    delta = pb.TokenDelta(token_ids=output.new_token_ids, text=output.text)
    for lp in output.logprobs or ():
        delta.logprobs.add(token_id=lp.token_id, logprob=lp.logprob,
                           top=[pb.TopLogprob(token_id=t.token_id, logprob=t.logprob)
                                for t in lp.top])
    return delta


def _set_duration(field: duration_pb2.Duration, end: float | None, start: float | None) -> None:
    if end is not None and start is not None:
        field.FromNanoseconds(int(max(end - start, 0.0) * 1e9))
