"""Fixtures: the HTTP layer over a scripted InferenceService (fast, no model)."""

from __future__ import annotations

import dataclasses

import aiohttp
import pytest

from lorafleet.dataplane.openai_http import ModelCard, RunningHttp, start_http_server
from tests.openai_http.fakes import BASE, FakeModels, ScriptedInference, start_scripted


@dataclasses.dataclass
class Scripted:
    """The HTTP server, its scripted backend and a session to call it."""

    http: RunningHttp
    grpc_server: object
    inference: ScriptedInference
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        """The OpenAI base URL."""
        return f"http://127.0.0.1:{self.http.port}/v1"


@pytest.fixture
async def scripted():
    """HTTP on a free port in front of ScriptedInference, with three model cards."""
    server, servicer = await start_scripted()
    models = FakeModels([ModelCard(BASE, None), ModelCard("acme/x", BASE),
                         ModelCard("acme/x@2", BASE)])
    http = await start_http_server(inference_address=f"127.0.0.1:{server.port}",
                                   models=models, base_model=BASE)
    session = aiohttp.ClientSession()
    yield Scripted(http, server, servicer, session)
    await session.close()
    await http.stop(0.5)
    await server.stop(0.5)
