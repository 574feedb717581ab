"""What every scenario shares: the generated checkpoint, adapter directories, worker
processes, and the options the user gave."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import pathlib
import shlex

from benchmarks.serving.cells import Mode, Target, run_cell
from benchmarks.serving.checkpoint import SHAPES, write_adapters, write_model
from benchmarks.serving.worker_process import (
    BASE_MODEL_NAME,
    WorkerProcess,
    serve_command,
    start_worker,
)
from benchmarks.serving.workload import Lengths, Popularity, WorkloadSpec, make_requests


class Context:
    """Owns the scratch directory's contents and the workers a scenario starts."""

    def __init__(self, args: argparse.Namespace, root: pathlib.Path):
        self.args = args
        self.root = root
        self.quick = args.quick
        self.rows: list[dict] = []
        self._model_dir = args.model
        self._pools: dict[int, list[pathlib.Path]] = collections.defaultdict(list)

    @property
    def model_dir(self) -> pathlib.Path:
        """--model, or a checkpoint of --shape generated on first use."""
        if self._model_dir is None:
            self._model_dir = write_model(self.root / "model", SHAPES[self.args.shape])
        return self._model_dir

    @property
    def vocab(self) -> int:
        """The checkpoint's vocabulary size: prompts are random ids below it."""
        return int(json.loads((self.model_dir / "config.json").read_text())["vocab_size"])

    @property
    def model_label(self) -> str:
        """What the rows say about the model."""
        if self.args.model is not None:
            return str(self.args.model)
        return f"{self.args.shape}: {SHAPES[self.args.shape].describe()}"

    def adapter_dirs(self, ranks: list[int]) -> list[pathlib.Path]:
        """Distinct adapter directories of these ranks (distinct weights, so distinct
        digests); written once and reused by later scenarios."""
        need = collections.Counter(ranks)
        for rank, count in need.items():
            pool = self._pools[rank]
            if len(pool) < count:
                pool += write_adapters(self.root / f"rank{rank}-{len(pool)}", self.model_dir,
                                       [rank] * (count - len(pool)))
        taken = collections.Counter()
        dirs = []
        for rank in ranks:
            dirs.append(self._pools[rank][taken[rank]])
            taken[rank] += 1
        return dirs

    def named_adapters(self, prefix: str, ranks: list[int]) -> dict[str, pathlib.Path]:
        """{'<prefix>/a000': dir, ...}, one adapter per rank given."""
        dirs = self.adapter_dirs(ranks)
        return {f"{prefix}/a{i:03d}": path for i, path in enumerate(dirs)}

    @contextlib.contextmanager
    def worker(self, adapters: dict[str, pathlib.Path], options: list[str]):
        """A `lorafleet serve` subprocess with these adapters and options (plus the user's
        --serve-args), stopped on exit."""
        extra = shlex.split(self.args.serve_args or "")
        args = serve_command(self.model_dir, list(adapters.items()),
                             ["--device", "cpu", *options, *extra],
                             http=self.args.transport == "http")
        shown = [word for word in args if "=" not in word and word != "--adapter"]
        print(f"  starting lorafleet {' '.join(shown)} (+ {len(adapters)} --adapter)",
              flush=True)
        threads = self.args.threads
        process = start_worker(args, env={"OMP_NUM_THREADS": str(threads)} if threads else None)
        try:
            yield process
        finally:
            process.stop()

    def target(self, process: WorkerProcess) -> Target:
        """Where a scenario's requests go."""
        return Target(process.address, process.metrics_url, process.http_url,
                      BASE_MODEL_NAME, process.pid)

    def warm_up(self, target: Target, adapters: list[str]) -> None:
        """Unmeasured requests over `adapters` (or the base model), so the first measured
        cell does not pay for first-use costs (kernel selection, slot installs)."""
        requests = self.requests(adapters, max(len(adapters), 16), prompt=Lengths("fixed", 64),
                                 output=Lengths("fixed", 4), seed=-1)
        asyncio.run(run_cell(target, self.mode(concurrency=8), requests))

    def mode(self, **fields) -> Mode:
        """A Mode with the user's transport and timeout."""
        fields.setdefault("tier_poll", self.args.tier_poll)
        return Mode(transport=self.args.transport, timeout=self.args.timeout, **fields)

    def requests(self, adapters, num_requests: int, *, prompt: Lengths, output: Lengths,
                 kind: str = "cycle", alpha: float = 0.0, seed: int = 0):
        """A seeded request list over `adapters` (names)."""
        spec = WorkloadSpec(Popularity(tuple(adapters), kind, alpha), prompt,
                            output, self.vocab, num_requests=num_requests,
                            seed=self.args.seed + seed)
        return make_requests(spec)

    def record(self, preset: str, rows: list[dict], **common) -> None:
        """Keeps rows for the JSON lines and plots, stamped with the scenario."""
        for row in rows:
            self.rows.append({"preset": preset, "model": self.model_label, **common, **row})
