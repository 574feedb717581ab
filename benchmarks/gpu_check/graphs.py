"""Part 6: decode steps replayed from CUDA graphs (dataplane/runner/graphs.py), proven
token for token and timed against the same steps launched kernel by kernel.

1. buckets: the GQA Llama of tests/support/tiny_models.py in float32 on the device, its
   engine built as a worker's (graphs captured at start for 1, 2, 4, 8 sequences), eight
   prompts asking for 5 to 12 tokens, so decode steps of every size from 8 down to 1 run,
   padded to their bucket; against transformers on CPU.
2. adapters: the same model with 8 adapters (rank 8, all seven projections) in 3 device
   slots and base rows beside them, 24 requests: every adapter a replay uses was loaded
   after the graphs were captured (the slots were empty then), and adapters are swapped
   into slots between replays. Graph replays against the same engine with its graphs
   turned off, token for token.
3. speed: one decode step of 8 sequences, graph replay against eager, base and adapters
   (the 8B-shaped figures are in the `decode` part, which runs graphs too).

On CPU (the dry run) there are no graphs: the runner's static buffers are replayed
eagerly, which is what tests/engine/test_decode_graphs.py checks in CI.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile
import time

import torch

from benchmarks.gpu_check.report import outcome
from lorafleet.dataplane.config.worker_config import WorkerConfig
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine_process.build import EngineParts, build_engine
from lorafleet.dataplane.engine_process.messages import AdapterSource
from lorafleet.dataplane.model.demo import write_adapter
from lorafleet.dataplane.runner.graphs import attach_decode_graphs
from tests.engine.conftest import _generate, make_prompts
from tests.support.tiny_models import make_checkpoint

CAP_S = 120.0
MAX_NUM_SEQS = 8
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
NUM_ADAPTERS, NUM_SLOTS = 8, 3


def run(device: torch.device, clock, *, is_dry_run: bool) -> dict:
    """The three checks that fit the cap; passes when every output matches."""
    import transformers

    rows, notes, graphs = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        model_dir = make_checkpoint(root / "llama-gqa", "llama-gqa")
        prompts = make_prompts((3, 7, 12, 18)) if is_dry_run else make_prompts()
        reference_model = transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32)
        reference = [_generate(reference_model, p) for p in prompts]
        built, graphs = _build(model_dir, device, {})
        rows.append(_buckets(built, graphs, prompts, reference))
        built.parts.close()
        if clock.can_start(30.0):
            adapters = {f"gpu-check/a{i}": write_adapter(
                root / f"a{i}", model_dir, rank=8, alpha=16, target_modules="all-linear",
                seed=i) for i in range(NUM_ADAPTERS)}
            built, graphs = _build(model_dir, device, adapters)
            rows.append(_adapters(built, graphs, adapters, 10 if is_dry_run else 24))
            if is_dry_run:  # eager replay against eager on a CPU times nothing of interest
                notes.append("speed: not measured in the dry run")
            elif clock.can_start(15.0):
                rows.extend(_speed(built, graphs, adapters))
            else:
                clock.skip("speed")
            built.parts.close()
        else:
            clock.skip("adapters and speed")
    checks = [row for row in rows if "is_match" in row]
    is_failed = not checks or not all(row["is_match"] for row in checks)
    notes.append(f"{sum(r['is_match'] for r in checks)}/{len(checks)} checks token for token "
                 f"(float32, engine on {device.type}, "
                 f"{'graphs replayed' if graphs.use_graphs else 'no graphs: eager replay'})")
    return {"status": "failed" if is_failed else outcome(clock), "rows": rows, "notes": notes}


@dataclasses.dataclass(frozen=True)
class _Built:
    """A worker's engine as the public builder makes it, and its adapters' digests."""

    parts: EngineParts
    digests: dict

    @property
    def engine(self):
        """The engine, stepped here."""
        return self.parts.engine


def _build(model_dir, device: torch.device, adapters: dict):
    """A worker's engine on `device` (graphs attached by the factory on CUDA; attached
    for eager replay elsewhere), every adapter registered at its source."""
    config = WorkerConfig(model_dir, device=device.type, dtype="float32",
                          kv_cache_bytes=64 << 20, block_size=4, max_num_seqs=MAX_NUM_SEQS,
                          max_loras=NUM_SLOTS, max_lora_rank=8, max_cpu_loras=NUM_ADAPTERS,
                          worker_id="gpu-check", prefix_cache_scope=None)
    parts = build_engine(config)
    engine = parts.engine
    graphs = engine.runner.graphs
    if graphs is None:  # not CUDA: the same buffers, replayed eagerly
        graphs = attach_decode_graphs(
            engine.runner, scratch_block=engine.allocator.try_allocate(1)[0],
            block_size=engine.allocator.block_size, max_num_seqs=MAX_NUM_SEQS,
            max_context=256, use_graphs=False)
    digests = {None: None}  # adapter name -> digest, for the requests
    for name, path in adapters.items():
        digest = parts.files.validate(str(path)).digest
        parts.host.add_source(AdapterSource(f"{name}@1", str(path), digest))
        digests[name] = digest
    return _Built(parts, digests), graphs


def _digest(built, name: str | None) -> str | None:
    return built.digests[name]


def _generate_all(built, requests, *, ignore_eos: bool = True) -> dict[str, list[int]]:
    """(request_id, adapter digest or None, prompt, max_tokens), all at once, to the end
    (at EOS too unless `ignore_eos`, as transformers' reference stops)."""
    engine = built.engine
    for request_id, digest, prompt, max_tokens in requests:
        engine.add_request(request_id, prompt, adapter=digest, params=dataclasses.replace(
            GREEDY, max_tokens=max_tokens, ignore_eos=ignore_eos))
    tokens = {request_id: [] for request_id, *_ in requests}
    deadline = time.monotonic() + 60
    while engine.has_unfinished() and time.monotonic() < deadline:
        outputs = engine.step()
        for out in outputs:
            tokens[out.request_id].extend(out.new_token_ids)
        if not outputs:
            time.sleep(0.002)  # adapter loads under way
    return tokens


def _buckets(built, graphs, prompts, reference) -> dict:
    lengths = [GREEDY.max_tokens - i for i in range(len(prompts))]
    tokens = _generate_all(built, [(f"r{i}", None, p, lengths[i])
                                    for i, p in enumerate(prompts)], ignore_eos=False)
    diverged = [i for i, p in enumerate(prompts) if tokens[f"r{i}"] != reference[i][:lengths[i]]]
    return {"check": "buckets vs transformers", "is_match": not diverged,
            "diverged": ",".join(map(str, diverged)) or "-",
            "replays": {f"{b}{'+lora' if lora else ''}": n
                        for (b, lora), n in sorted(graphs.replays.items())}}


def _adapters(built, graphs, adapters, num_requests: int) -> dict:
    names = [*adapters, None]
    requests = [(f"a{i}", _digest(built, names[i % len(names)]),
                 [10 + (i * 31 + j * 7) % 300 for j in range(3 + i % 11)], 10)
                for i in range(num_requests)]
    runner = built.engine.runner
    with_graphs = _generate_all(built, requests)
    runner.graphs = None
    try:
        eager = _generate_all(built, [(f"e{r[0]}", *r[1:]) for r in requests])
    finally:
        runner.graphs = graphs
    diverged = [r[0] for r in requests if with_graphs[r[0]] != eager[f"e{r[0]}"]]
    return {"check": f"{NUM_ADAPTERS} adapters in {NUM_SLOTS} slots, graphs vs eager",
            "is_match": not diverged, "diverged": ",".join(diverged) or "-",
            "lora_replays": sum(n for (_, lora), n in graphs.replays.items() if lora)}


def _speed(built, graphs, adapters) -> list[dict]:
    """Milliseconds per decode step of MAX_NUM_SEQS sequences, replayed and eager."""
    runner, rows = built.engine.runner, []
    for label, names in (("base", [None]), ("adapters", list(adapters)[:NUM_SLOTS])):
        requests = [(f"{label}{i}", _digest(built, names[i % len(names)]), [11 + i] * 8, 24)
                    for i in range(MAX_NUM_SEQS)]
        row = {"case": f"{MAX_NUM_SEQS} decodes, {label}"}
        for mode in ("graphs", "eager"):
            runner.graphs = graphs if mode == "graphs" else None
            try:
                row[f"{mode}_step_ms"] = _step_ms(built, [(f"{mode}-{r[0]}", *r[1:])
                                                            for r in requests])
            finally:
                runner.graphs = graphs
        row["eager_over_graphs"] = round(row["eager_step_ms"] / row["graphs_step_ms"], 2)
        rows.append(row)
    return rows


def _step_ms(built, requests) -> float:
    """Median milliseconds of the decode steps (every request past its prompt)."""
    engine = built.engine
    for request_id, digest, prompt, max_tokens in requests:
        engine.add_request(request_id, prompt, adapter=digest,
                           params=dataclasses.replace(GREEDY, max_tokens=max_tokens))
    times = []
    while engine.has_unfinished():
        is_decode = engine.scheduler.num_waiting == 0 and all(
            r.num_computed_tokens >= len(r.prompt_token_ids) for r in engine.scheduler.running)
        began = time.perf_counter()
        engine.step()
        if engine.runner.model.device.type == "cuda":
            torch.cuda.synchronize()
        if is_decode:
            times.append(time.perf_counter() - began)
    times.sort()
    return round(1e3 * times[len(times) // 2], 3) if times else float("nan")
