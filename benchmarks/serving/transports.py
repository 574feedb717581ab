"""How one request is sent and timed: raw grpc.aio stubs, the lorafleet AsyncClient, or
OpenAI HTTP (server-sent events). Each returns a `Result` with the arrival time of every
token, measured on the client, and never raises for a server's refusal."""

from __future__ import annotations

import dataclasses
import json
import time

import grpc

from benchmarks.serving.workload import RequestSpec
from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc

TRANSPORTS = ("grpc", "client", "http")


@dataclasses.dataclass
class Result:
    """One finished request as the client saw it (times from time.perf_counter())."""

    spec: RequestSpec
    sent: float
    tier: str = "unknown"  # the adapter's tier when the request was sent
    token_times: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None  # the status code's name, when it failed
    done: float = 0.0
    num_prompt_tokens: int = 0  # from the summary (grpc transport)
    num_cached_tokens: int = 0  # prompt tokens the worker's prefix cache supplied

    @property
    def num_tokens(self) -> int:
        """Output tokens received."""
        return len(self.token_times)

    @property
    def ttft(self) -> float | None:
        """Send to first token, seconds."""
        return self.token_times[0] - self.sent if self.token_times else None

    @property
    def tpot(self) -> float | None:
        """Mean time between output tokens after the first, seconds."""
        if len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) / (len(self.token_times) - 1)

    @property
    def e2e(self) -> float:
        """Send to end of stream, seconds."""
        return self.done - self.sent

    def add_tokens(self, count: int) -> None:
        """Counts `count` tokens arriving now."""
        now = time.perf_counter()
        self.token_times.extend([now] * count)


def bearer_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying an API key, as lorafleet's clients send it."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


class GrpcTransport:
    """Generate over grpc.aio with the generated stubs: the least client CPU per token."""

    def __init__(self, address: str, timeout: float, api_key: str | None = None):
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = ipb_grpc.InferenceServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = bearer_metadata(api_key)

    async def send(self, result: Result) -> None:
        """Streams one request into `result`."""
        spec = result.spec
        request = ipb.GenerateRequest(
            adapter=spec.adapter, token_ids=ipb.TokenIds(ids=spec.prompt),
            sampling=ipb.SamplingParams(max_tokens=spec.max_tokens, temperature=0.0,
                                        ignore_eos=True))
        try:
            async for message in self._stub.Generate(request, timeout=self._timeout,
                                                     metadata=self._metadata):
                if message.HasField("delta"):
                    result.add_tokens(len(message.delta.token_ids))
                else:
                    result.num_prompt_tokens = message.summary.usage.prompt_tokens
                    result.num_cached_tokens = message.summary.usage.cached_tokens
        except grpc.aio.AioRpcError as exc:
            result.error = exc.code().name

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()


class ClientTransport:
    """Generate through lorafleet.clients.AsyncClient (typed events; retries turned off so
    every refusal is counted)."""

    def __init__(self, address: str, timeout: float, api_key: str | None = None):
        from lorafleet.clients.aio import AsyncClient
        from lorafleet.clients.events import TokenEvent
        from lorafleet.clients.retry import RetryPolicy

        self._client = AsyncClient(address, timeout=timeout, api_key=api_key,
                                   retry=RetryPolicy(max_attempts=1))
        self._token_event = TokenEvent

    async def send(self, result: Result) -> None:
        """Streams one request into `result`."""
        from lorafleet.clients.errors import LorafleetError

        spec = result.spec
        try:
            async for event in self._client.generate_stream(
                    token_ids=list(spec.prompt), adapter=spec.adapter,
                    max_tokens=spec.max_tokens, temperature=0.0, ignore_eos=True):
                if isinstance(event, self._token_event):
                    result.add_tokens(len(event.token_ids))
        except LorafleetError as exc:
            result.error = exc.code.name

    async def close(self) -> None:
        """Closes the client's channel."""
        await self._client.close()


class HttpTransport:
    """POST /v1/completions with stream=true. Chunks carry text only, and a token with no
    text (held back, or outside the tokenizer) sends none, so every request asks for
    logprobs 0: then each token arrives in a chunk of its own and can be timed."""

    def __init__(self, base_url: str, base_model: str, timeout: float,
                 api_key: str | None = None):
        import aiohttp

        self._url = base_url.rstrip("/") + "/completions"
        self._base_model = base_model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                              headers=headers)

    async def send(self, result: Result) -> None:
        """Streams one request into `result`."""
        spec = result.spec
        body = {"model": spec.adapter or self._base_model, "prompt": list(spec.prompt),
                "max_tokens": spec.max_tokens, "temperature": 0, "ignore_eos": True,
                "logprobs": 0, "stream": True}
        async with self._session.post(self._url, json=body) as response:
            if response.status != 200:
                result.error = f"HTTP_{response.status}"
                return
            async for line in response.content:
                self._on_line(result, line)

    @staticmethod
    def _on_line(result: Result, line: bytes) -> None:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            return
        chunk = json.loads(line[6:])
        if "error" in chunk:
            result.error = str(chunk["error"].get("code", "error")).upper()
        for choice in chunk.get("choices", ()):
            tokens = (choice.get("logprobs") or {}).get("tokens") or ()
            if tokens:
                result.add_tokens(len(tokens))

    async def close(self) -> None:
        """Closes the HTTP session."""
        await self._session.close()
