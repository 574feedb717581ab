"""What Client and AsyncClient share: the channel settings, the stubs, and the call
signatures. Each subclass supplies the I/O (`_open_channel`, `_responses`, `_complete`,
`_unary`), so an argument means the same thing whichever client takes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from lorafleet.clients.access_calls import AccessCalls
from lorafleet.clients.admin_calls import AdminCalls
from lorafleet.clients.events import event_of
from lorafleet.clients.requests import generate_request
from lorafleet.clients.retry import RetryPolicy
from lorafleet.control.v1 import (
    access_service_pb2_grpc,
    adapter_service_pb2_grpc,
    fleet_service_pb2_grpc,
)
from lorafleet.inference.v1 import inference_service_pb2_grpc
from lorafleet.worker.v1 import worker_service_pb2_grpc

DEFAULT_TIMEOUT = 60.0


class ClientBase(AdminCalls, AccessCalls):
    """Settings and stubs for one server address (a worker, a gateway or a control plane).

    address: "host:port". api_key: sent as `authorization: Bearer KEY` on every call.
    timeout: the default deadline in seconds of each call (None: no deadline).
    retry: how Generate retries UNAVAILABLE before its first token.
    tls, root_certificates, private_key, certificate_chain: a TLS channel (PEM bytes;
    root_certificates None means the system's roots; the key and chain together are a
    client certificate for mTLS). Giving any of them implies tls.
    channel_options: extra gRPC channel arguments, e.g. [("grpc.max_receive_message_length", N)].
    """

    def __init__(self, address: str, *, api_key: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT, retry: RetryPolicy | None = None,
                 tls: bool = False, root_certificates: bytes | None = None,
                 private_key: bytes | None = None, certificate_chain: bytes | None = None,
                 channel_options: Sequence[tuple[str, Any]] = ()):
        if not address:
            raise ValueError("address: give host:port of a lorafleet server")
        self.address = address
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        credentials = _credentials(tls, root_certificates, private_key, certificate_chain)
        self._channel = self._open_channel(address, credentials, list(channel_options))
        self._stubs = {
            "inference": inference_service_pb2_grpc.InferenceServiceStub(self._channel),
            "worker": worker_service_pb2_grpc.WorkerServiceStub(self._channel),
            "adapters": adapter_service_pb2_grpc.AdapterServiceStub(self._channel),
            "fleet": fleet_service_pb2_grpc.FleetServiceStub(self._channel),
            "access": access_service_pb2_grpc.AccessServiceStub(self._channel),
        }

    def _open_channel(self, address, credentials, options):
        raise NotImplementedError

    def _deadline_of(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def generate_stream(self, prompt: str | None = None, *, messages=None, token_ids=None,
                        adapter: str = "", max_tokens: int | None = None,
                        temperature: float | None = None, top_p: float | None = None,
                        top_k: int | None = None, seed: int | None = None,
                        stop: str | Sequence[str] = (), stop_token_ids: Sequence[int] = (),
                        logprobs: int | None = None, ignore_eos: bool = False,
                        routing_key: str = "", timeout: float | None = None,
                        request_id: str = ""):
        """Streams one completion: TokenEvent per batch of new tokens, then one Summary.

        Give exactly one prompt form: `prompt` (text), `messages` (chat turns, dicts with
        role and content, rendered with the model's chat template) or `token_ids`.
        `adapter` is "tenant/name", "tenant/name@N" or "" for the base model. Sampling
        arguments left as None take the server's defaults (temperature 1.0, 16 tokens).
        `timeout` (seconds) overrides the client's default deadline for this call.
        An AsyncClient returns an async iterator.
        """
        request = generate_request(
            prompt, messages=messages, token_ids=token_ids, adapter=adapter,
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            seed=seed, stop=stop, stop_token_ids=stop_token_ids, logprobs=logprobs,
            ignore_eos=ignore_eos, routing_key=routing_key, request_id=request_id)
        return self._events(self.generate_responses(request, timeout=timeout))

    def generate(self, prompt: str | None = None, **options):
        """The whole completion as one Completion(text, token_ids, summary); takes the
        arguments of `generate_stream`. On an AsyncClient, await it."""
        return self._complete(self.generate_stream(prompt, **options))

    def generate_responses(self, request, *, timeout: float | None = None):
        """Streams the raw GenerateResponse messages of a prebuilt GenerateRequest, with
        the same deadline, retries and typed errors as `generate_stream`."""
        return self._responses(request, self._deadline_of(timeout))

    def _events(self, responses):
        return (event_of(message) for message in responses)

    def _responses(self, request, timeout):
        raise NotImplementedError

    def _complete(self, events):
        raise NotImplementedError


def _credentials(tls, root_certificates, private_key, certificate_chain):
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("private_key and certificate_chain go together (a client certificate)")
    if not tls and root_certificates is None and private_key is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
