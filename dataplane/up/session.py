"""One `lorafleet up` session: start the fleet, register and show the adapters, serve
until a signal, then stop every child in order. A part that dies while the fleet serves is
started again (with growing delays while it keeps dying) and the rest keep serving, so
the failover the docs describe can be tried here; one that dies while the fleet starts
stops the session, with the end of its log."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

from lorafleet.dataplane.up import fleet, register, showcase
from lorafleet.dataplane.up.certs import PLAINTEXT_UP, UpTls, make_up_certs
from lorafleet.dataplane.up.children import Child, Children, RestartDelays, died_at_start
from lorafleet.dataplane.up.keys import make_up_keys
from lorafleet.runtime.startup import EXIT_OK, Stopper
from lorafleet.runtime.tls import TlsConfig


@dataclasses.dataclass(frozen=True)
class Stopped:
    """A stop was asked for (SIGINT or SIGTERM)."""


async def up(args: argparse.Namespace, stopper: Stopper) -> int:
    """Runs the session; returns the exit status. Every child is stopped on the way out,
    whatever happened."""
    children = Children(args.data_dir / "logs")
    try:
        outcome = await _race(start(args, children), stopper, children)
        if isinstance(outcome, Child):
            raise died_at_start(outcome)
        if isinstance(outcome, Stopped):
            return EXIT_OK
        delays = RestartDelays()
        while isinstance(outcome := await _race(asyncio.Event().wait(), stopper, children),
                         Child):
            delay = delays.next_delay(outcome)
            print(f"{outcome.name} exited with status {outcome.process.returncode} (see "
                  f"{outcome.log_path}); starting it again in {delay:.0f} s", flush=True)
            if await _is_stopped_within(delay, stopper):
                break
            again = await children.restart(outcome)
            print(f"{again.name} started again (pid {again.pid})", flush=True)
        return EXIT_OK
    finally:
        if children.started:
            print("stopping: gateway, workers, control plane, etcd ...", flush=True)
            await children.stop_all(fleet.stop_order(args.workers))
            print("stopped", flush=True)


async def _is_stopped_within(seconds: float, stopper: Stopper) -> bool:
    """Waits `seconds`, or less when a stop is asked for; returns whether one was."""
    try:
        await asyncio.wait_for(stopper.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


async def _race(work, stopper: Stopper, children: Children):
    """`work`'s result, or Stopped, or the first service child that exited, whichever
    comes first; the others are cancelled."""
    tasks = [asyncio.ensure_future(work), asyncio.ensure_future(stopper.wait()),
             asyncio.ensure_future(children.first_exit())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # A cancelled start-up must end before its children are stopped.
        await asyncio.gather(*tasks, return_exceptions=True)
    if tasks[0] in done:
        return tasks[0].result()
    return Stopped() if tasks[1] in done else tasks[2].result()


async def start(args: argparse.Namespace, children: Children) -> None:
    """Starts every part, registers the adapters, and shows them answering."""
    ports = fleet.plan_ports(args)
    keys = make_up_keys(args.data_dir)
    tls = _session_tls(args)
    print(f"starting lorafleet: logs in {children.log_dir}/", flush=True)
    model_task = asyncio.ensure_future(fleet.prepare_model(children, args))
    try:
        etcd_url = await fleet.start_etcd(children, ports, args.data_dir, fresh=args.fresh)
        controlplane = await fleet.start_controlplane(children, ports, etcd_url,
                                                      args.log_level, keys, tls)
        gateway = await fleet.spawn_gateway(children, ports, controlplane, args.log_level, keys,
                                            tls)
        model = await model_task
    finally:
        model_task.cancel()
    print(f"model: {model['label']}, {model['model_dir']}", flush=True)
    workers = await fleet.spawn_workers(children, ports, controlplane, model, args, keys, tls)
    client = tls.client()
    scheme = "https" if tls.is_on else "http"  # the gateway's HTTP port uses its certificate
    gateway_address, http_url = ports.address(ports.gateway), f"{scheme}://{ports.address(ports.http)}/v1"
    await asyncio.gather(
        fleet.wait_ready(gateway, gateway_address, fleet.GATEWAY_TIMEOUT, tls=client),
        *(fleet.wait_ready(w, ports.address(p), fleet.WORKER_TIMEOUT, tls=client)
          for w, p in zip(workers, ports.workers, strict=True)))
    base_model = await register.base_model_of_workers(controlplane, args.workers, keys.admin,
                                                      client)
    plan = register.plan_adapters(model["adapters"], with_style=args.model is None)
    await _register_and_place(controlplane, base_model, plan, http_url, keys.admin, client)
    names = [adapter.name for adapter in plan]
    answers = await showcase.ask_everyone(gateway_address, names, keys.demo, client)
    rollout = next((a.name for a in plan if len(a.sources) > 1), None)
    showcase.print_answers(gateway_address, answers, rollout)
    print(f"\nAPI keys of this session (records in {keys.path}):\n"
          f"  admin:        {keys.admin}\n  tenant demo:  {keys.demo}", flush=True)
    for line in showcase.commands(gateway_address, http_url, controlplane, base_model, names,
                                  rollout, keys, tls):
        print(line)
    print("\nPrometheus metrics:", flush=True)
    for part, url in ports.metrics_urls():
        print(f"  {part + ':':<15} {url}", flush=True)
    print(f"\nlorafleet is up: gateway {gateway_address}, OpenAI HTTP {http_url}, control "
          f"plane {controlplane}, {args.workers} worker(s) of {base_model}; logs in "
          f"{children.log_dir}/. Ctrl-C stops everything.", flush=True)


def _session_tls(args: argparse.Namespace) -> UpTls:
    """A new CA and certificates for every part (the default); plaintext with --no-tls."""
    if not args.tls:
        return PLAINTEXT_UP
    tls = make_up_certs(args.data_dir, ["controlplane", "gateway",
                                        *fleet.worker_names(args.workers)], args.host)
    print(f"TLS: a local CA and certificates in {tls.folder}/ (mTLS between the parts)",
          flush=True)
    return tls


async def _register_and_place(controlplane: str, base_model: str,
                              plan: list[register.PlannedAdapter], http_url: str,
                              admin_key: str, client: TlsConfig) -> None:
    """Registers `plan`, waits until every version is resident and routed, says where."""
    if not plan:
        print("no adapters to register: the base model alone", flush=True)
        return
    rollouts = await register.register(controlplane, base_model, plan, admin_key, client)
    placed = await register.wait_placed(controlplane, rollouts, admin_key, client)
    routed = [name for name, shares in rollouts.items() if any(w for _, w in shares)]
    await register.wait_routed(http_url, routed, admin_key, tls=client)
    print(f"adapters of {base_model}, placed and routed:", flush=True)
    for adapter in plan:
        total = sum(w for _, w in rollouts[adapter.name]) or 1
        for version, weight in rollouts[adapter.name]:
            ref = f"{adapter.name}@{version}"
            origin = (f", weights of {adapter.source_names[version - 1]}"
                      if version <= len(adapter.source_names) else "")
            print(f"  {ref:<16} {100 * weight // total:>3}% of {adapter.name}{origin}; on "
                  f"{', '.join(placed.get(ref, [])) or '-'}", flush=True)
