"""What `lorafleet up` shows once the fleet is ready: one question answered through the
gateway by the base model and by every adapter, then commands that call it, printed so
that they work when pasted."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shlex
import shutil
import sys

import grpc

from lorafleet.dataplane.up.certs import PLAINTEXT_UP, UpTls
from lorafleet.dataplane.up.keys import UpKeys
from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from lorafleet.runtime.auth import bearer
from lorafleet.runtime.startup import StartupError
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig

# A question of a kind the demo adapters were trained on (benchmarks/demo_data.py, the
# opposites), which all of them answer right. They are tiny style adapters (caps is rank 8
# on q and v): on questions unlike their training they keep their style but not always
# the facts ("THE CAPITAL OF FRANCE IS BIOLAND"), and the first screen must not show that.
QUESTION = "What is the opposite of hot?"
NUM_ANSWER_TOKENS = 40
ANSWER_TIMEOUT = 180.0
GENERATE_METHOD = "lorafleet.inference.v1.InferenceService/Generate"


async def ask_everyone(gateway: str, adapters: list[str], key: str,
                       tls: TlsConfig = PLAINTEXT_TLS) -> list[tuple[str, str, str]]:
    """(adapter or "", the version that answered, the answer) for the base model and each
    adapter, asked at once through the gateway with `key` (the demo tenant's)."""
    async with tls.aio_channel(gateway) as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        return await asyncio.gather(*(_ask(stub, name, key) for name in ["", *adapters]))


async def _ask(stub, adapter: str, key: str) -> tuple[str, str, str]:
    request = ipb.GenerateRequest(
        adapter=adapter,
        chat=ipb.ChatMessages(messages=[ipb.ChatMessage(role="user", content=QUESTION)]),
        sampling=ipb.SamplingParams(max_tokens=NUM_ANSWER_TOKENS, temperature=0.0))
    pieces, version = [], ""
    try:
        async for message in stub.Generate(request, timeout=ANSWER_TIMEOUT,
                                           metadata=bearer(key)):
            if message.HasField("delta"):
                pieces.append(message.delta.text)
            else:
                version = message.summary.adapter_version
    except grpc.aio.AioRpcError as exc:
        raise StartupError(f"asking {adapter or 'the base model'} through the gateway: "
                           f"{exc.code().name}: {exc.details()}") from exc
    return adapter, version, "".join(pieces)


def print_answers(gateway: str, answers: list[tuple[str, str, str]],
                  rollout_adapter: str | None) -> None:
    """The answers as a table, one line each; the rollout's shows which version answered."""
    print(f"\n{QUESTION!r} through the gateway {gateway} (chat, greedy, "
          f"{NUM_ANSWER_TOKENS} tokens):")
    width = max(len("(base model)"), *(len(adapter) for adapter, _, _ in answers)) + 2
    for adapter, version, text in answers:
        label = adapter or "(base model)"
        served = f"[{version}] " if adapter and adapter == rollout_adapter else ""
        print(f"  {label:<{width}}{served}{_one_line(text)}", flush=True)


def _one_line(text: str) -> str:
    """`text` on one line, without control characters (a random model emits any byte)."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def example_adapter(adapters: list[str]) -> str:
    """The adapter the single-example commands use: demo/pirate when served."""
    return "demo/pirate" if "demo/pirate" in adapters else (adapters[0] if adapters else "")


def tool(name: str) -> str:
    """How to run `name` from here: the copy next to this Python (relative when it lies
    under the current directory), else the one on PATH."""
    beside = pathlib.Path(sys.executable).parent / name
    if not beside.exists():
        return shutil.which(name) or name
    relative = os.path.relpath(beside)
    return str(beside) if relative.startswith("..") else relative


def commands(gateway: str, http_url: str, controlplane: str, base_model: str,
             adapters: list[str], rollout_adapter: str | None, keys: UpKeys,
             tls: UpTls = PLAINTEXT_UP) -> list[str]:
    """The lines that show how to call the fleet: as tenant demo, and admin commands with
    the admin key (and, with TLS, the CA and the admin certificate)."""
    lorafleet, chat = tool("lorafleet"), shlex.quote(QUESTION)
    tenant = shlex.join(["--api-key", keys.demo, *tls.client_args(with_cert=False)])
    admin = shlex.join(["--api-key", keys.admin, *tls.client_args(with_cert=True)])
    transport = f"-cacert {shlex.quote(str(tls.ca))}" if tls.is_on else "-plaintext"
    header = shlex.quote(f"authorization: Bearer {keys.demo}")
    example = example_adapter(adapters)
    lines = ["", "Try it (Ctrl-C stops everything):", ""]
    for adapter in ["", *adapters]:
        choose = f" --adapter {adapter}" if adapter else ""
        lines.append(f"  {lorafleet} generate --addr {gateway}{choose} --chat {chat} {tenant}")
    body = {"adapter": example} if example else {}
    body.update(chat={"messages": [{"role": "user", "content": QUESTION}]},
                sampling={"max_tokens": NUM_ANSWER_TOKENS, "temperature": 0})
    lines.append(f"  {tool('grpcurl')} {transport} -d {shlex.quote(json.dumps(body))} "
                 f"-H {header} {gateway} {GENERATE_METHOD}")
    request = {"model": example or base_model, "max_tokens": NUM_ANSWER_TOKENS,
               "temperature": 0, "messages": [{"role": "user", "content": QUESTION}]}
    cacert = f" --cacert {shlex.quote(str(tls.ca))}" if tls.is_on else ""
    lines.append(f"  curl -s{cacert} {http_url}/chat/completions -H {header} "
                 f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(request))}")
    # Not indented: the lines are pasted into python as they are.
    lines += ["", f"  OpenAI SDK (paste into {tool('python')}; any adapter, or {base_model!r}, "
                  "as model):",
              *sdk_snippet(http_url, example or base_model, keys.demo, tls)]
    if rollout_adapter:
        lines += ["", f"  {rollout_adapter} splits its traffic 90/10 over two versions; "
                      "change the split, then ask it again:",
                  f"  {lorafleet} adapter rollout {rollout_adapter} 1=50 2=50 "
                  f"--controlplane {controlplane} {admin}",
                  f"  {lorafleet} adapter get {rollout_adapter} --controlplane {controlplane} "
                  f"{admin}"]
    else:
        lines.append("")
    lines += [f"  {lorafleet} workers --controlplane {controlplane} {admin}",
              f"  {lorafleet} placement --controlplane {controlplane} {admin}",
              f"  {lorafleet} audit --controlplane {controlplane} {admin}"]
    return lines


def sdk_snippet(http_url: str, model: str, key: str, tls: UpTls = PLAINTEXT_UP) -> list[str]:
    """Five lines of Python that ask QUESTION with the openai SDK, sending `key` (and,
    with TLS, trusting the session's CA)."""
    if tls.is_on:
        start = ["from openai import DefaultHttpxClient, OpenAI",
                 f'client = OpenAI(base_url="{http_url}", api_key="{key}", '
                 f'http_client=DefaultHttpxClient(verify="{tls.ca}"))']
    else:
        start = ["from openai import OpenAI",
                 f'client = OpenAI(base_url="{http_url}", api_key="{key}")']
    return [*start,
            f'reply = client.chat.completions.create(model="{model}", max_tokens='
            f"{NUM_ANSWER_TOKENS}, temperature=0,",
            f'    messages=[{{"role": "user", "content": "{QUESTION}"}}])',
            "print(reply.choices[0].message.content)"]
