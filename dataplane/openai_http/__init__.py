"""OpenAI-compatible HTTP (completions, chat, models) in front of an InferenceService.

One implementation for workers and the gateway: it translates each HTTP request into a
`GenerateRequest` for the gRPC server of the same process. Imports no torch.
"""

from lorafleet.dataplane.openai_http.limits import MAX_BODY_BYTES
from lorafleet.dataplane.openai_http.models import ModelCard, ModelLister, WorkerModels
from lorafleet.dataplane.openai_http.server import (
    RunningHttp,
    start_http_server,
    start_worker_http,
)

__all__ = ["MAX_BODY_BYTES", "ModelCard", "ModelLister", "RunningHttp", "WorkerModels",
           "start_http_server", "start_worker_http"]
