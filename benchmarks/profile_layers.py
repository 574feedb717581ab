"""Where a decode step's time goes, layer by layer (CPU, the base model, torch.profiler).

A generated checkpoint (`--shape`, default smollm2: the demo model's shape, 30 layers of
hidden 576, random weights, so nothing is downloaded) is served by an engine from
`create_engine`; for each B of `--seqs` (default 32 and 1), B sequences prefill a prompt of
`--context` tokens, then decode steps are measured:

  step ms     one `engine.step()` (schedule, build the batch, forward, sample), unprofiled,
              and the decode tokens/s it makes (B per step);
  forward ms  the decoder's forward on that step's batch, unprofiled;
  under torch.profiler: the top-level operations (ops) one layer runs, by name and by
  class (matmul, attention, kv cache, elementwise, layout), their time, and the time
  outside any op (Python between ops: the layer's wall time less its ops').

A layer's ops are those between the ops of a forward of the same model with no layers
(embedding and rotary lookups before, norm and head after), averaged over the layers.
Unprofiled times are the best and the median of `--repeats` x `--steps` steps; the profile
is the round of `--steps` forwards with the least wall time (the profiler adds a few µs to
every op, so its times are for comparing classes; the unprofiled ms are the real cost).
Everything runs on a thread of its own, as the worker steps its engine.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import pathlib
import statistics
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.results import append_rows, describe_machine
from benchmarks.serving.checkpoint import SHAPES, write_model
from benchmarks.serving.references import on_thread
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.scheduler import SchedulerConfig
from lorafleet.dataplane.model.decoder import DecoderModel
from lorafleet.dataplane.runner.factory import create_engine
from lorafleet.dataplane.runner.kv_cache import KVCacheBudget

# op name (without its namespace, aten:: or mkldnn::) -> class; anything else is "other".
OP_CLASSES = {
    "matmul": ("mm", "addmm", "linear", "matmul", "bmm", "_linear_pointwise", "mkldnn_rnn"),
    "attention": ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu"),
    "kv cache": ("index_copy_", "index_select", "index", "embedding"),
    "elementwise": ("add", "add_", "mul", "mul_", "pow", "mean", "rsqrt", "silu", "silu_",
                    "neg", "sub", "div", "to", "_to_copy", "copy_", "rms_norm",
                    "_fused_rms_norm", "addcmul", "addcmul_", "where", "roll"),
    "layout": ("cat", "split", "split_with_sizes", "view", "reshape", "slice", "select",
               "transpose", "unsqueeze", "squeeze", "empty", "empty_like", "new_zeros",
               "zeros", "narrow", "contiguous", "clone", "as_strided", "chunk", "t",
               "unflatten", "flatten", "expand", "unbind", "alias"),
}
CLASS_OF = {name: cls for cls, names in OP_CLASSES.items() for name in names}


@dataclasses.dataclass
class OpProfile:
    """Top-level ops of a stretch of a forward: calls and µs by op name, and its wall µs."""

    calls: collections.Counter
    micros: collections.Counter
    wall_us: float

    def by_class(self) -> dict[str, tuple[float, float]]:
        """class -> (calls, µs)."""
        out: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
        for name, calls in self.calls.items():
            entry = out[CLASS_OF.get(name, "other")]
            entry[0] += calls
            entry[1] += self.micros[name]
        return {cls: (calls, us) for cls, (calls, us) in out.items()}

    @property
    def outside_us(self) -> float:
        """Wall µs not inside any top-level op."""
        return self.wall_us - sum(self.micros.values())


def _decoding_engine(model_dir: pathlib.Path, num_seqs: int, context: int):
    """An engine whose `num_seqs` sequences have prefilled `context` tokens and decode on."""
    engine = create_engine(model_dir, device="cpu", dtype="float32",
                           kv_cache=KVCacheBudget(num_bytes=512 << 20),
                           scheduler_config=SchedulerConfig(max_num_seqs=num_seqs))
    params = SamplingParams(max_tokens=10_000, temperature=0.0, ignore_eos=True)
    for i in range(num_seqs):
        engine.add_request(f"r{i}", [10 + (i * 7 + j) % 300 for j in range(context)],
                           params=params)
    while engine.scheduler.num_waiting or any(
            r.num_computed_tokens < len(r.prompt_token_ids) for r in engine.scheduler.running):
        engine.step()
    for _ in range(3):  # warm-up decodes
        engine.step()
    return engine


def _capture_batch(engine):
    """The StepBatch of the engine's next step (which runs as usual): the runner's forward
    is wrapped for that one step, so the forward can then be timed alone on it."""
    runner, captured = engine.runner, []
    forward = runner.forward
    runner.forward = lambda batch: captured.append(batch) or forward(batch)
    try:
        engine.step()
    finally:
        del runner.forward
    return captured[0]


def _times_ms(fn, steps: int, repeats: int) -> tuple[float, float]:
    """(best, median) ms of one call of fn over `repeats` rounds of `steps` calls: on a
    shared machine the best is the cost of the work, the median shows the neighbours."""
    times = []
    for _ in range(repeats * steps):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1e3)
    return min(times), statistics.median(times)


def _top_level_ops(forward, steps: int) -> list[list]:
    """The top-level op events of each of `steps` forwards, in order."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            forward()
    events = sorted((e for e in prof.events() if e.cpu_parent is None and "::" in e.name),
                    key=lambda e: e.time_range.start)  # aten:: and mkldnn:: ops
    size, rest = divmod(len(events), steps)
    if rest:
        raise RuntimeError(f"{len(events)} ops do not split into {steps} equal forwards")
    return [events[i * size:(i + 1) * size] for i in range(steps)]


def _layers_slice(full: list[str], bare: list[str]) -> slice:
    """Where the layers' ops are in a forward's op names, given the forward with no layers:
    the model's ops are bare[:k], then the layers', then bare[k:]."""
    for k in range(len(bare) + 1):
        tail = len(full) - (len(bare) - k)
        if full[:k] == bare[:k] and full[tail:] == bare[k:]:
            return slice(k, tail)
    raise RuntimeError("the forward's ops do not contain the bare model's around its layers")


def _summary(events: list, num_forwards: float) -> OpProfile:
    """Calls, µs and wall µs of `events` (spread over `num_forwards` forwards or layers)."""
    calls, micros = collections.Counter(), collections.Counter()
    for event in events:
        name = event.name.split("::", 1)[1]
        calls[name] += 1 / num_forwards
        micros[name] += event.cpu_time_total / num_forwards
    wall = events[-1].time_range.end - events[0].time_range.start if events else 0.0
    return OpProfile(calls, micros, wall / num_forwards)


def _profile(forward, bare_forward, num_layers: int, steps: int,
             repeats: int) -> tuple[OpProfile, OpProfile]:
    """(one forward, one layer) of the round with the least wall time per forward."""
    bare = [e.name for e in _top_level_ops(bare_forward, 1)[0]]
    best = None
    for _ in range(repeats):
        forwards = _top_level_ops(forward, steps)
        layers = _layers_slice([e.name for e in forwards[0]], bare)
        whole = _summary([e for f in forwards for e in f], steps)
        whole.wall_us = sum(f[-1].time_range.end - f[0].time_range.start
                            for f in forwards) / steps
        layer = _summary([e for f in forwards for e in f[layers]], steps * num_layers)
        layer.wall_us = sum(f[layers][-1].time_range.end - f[layers][0].time_range.start
                            for f in forwards) / (steps * num_layers)
        if best is None or whole.wall_us < best[0].wall_us:
            best = (whole, layer)
    return best


@torch.inference_mode()
def measure(model_dir: pathlib.Path, num_seqs: int, context: int, steps: int,
            repeats: int) -> dict:
    """Step and forward ms, and the profiles of the whole forward and of one layer."""
    engine = _decoding_engine(model_dir, num_seqs, context)
    runner = engine.runner
    batch = _capture_batch(engine)
    model = runner.model
    bare = DecoderModel(model.config, dataclasses.replace(model.weights, layers=()),
                        model.device, model.dtype)

    def forward(m=model):
        m.forward(batch.input_ids, batch.positions, batch.attention, runner.kv_cache,
                  batch.sample_rows)

    forward_ms, forward_median = _times_ms(forward, steps, repeats)
    step_ms, step_median = _times_ms(engine.step, steps, repeats)
    whole, layer = _profile(forward, lambda: forward(bare), model.config.num_layers, steps,
                            repeats)
    return {"seqs": num_seqs, "step_ms": step_ms, "step_median_ms": step_median,
            "forward_ms": forward_ms, "forward_median_ms": forward_median, "whole": whole,
            "layer": layer, "num_layers": model.config.num_layers}


def _print(results: list[dict], args) -> None:
    shape = SHAPES[args.shape]
    print(f"\nDecode step profile, {args.shape} ({shape.describe()}), float32 CPU, context "
          f"{args.context}, {torch.get_num_threads()} threads; {args.repeats} rounds of "
          f"{args.steps} steps\n{describe_machine()}")
    print(f"{'B':>3} {'step ms':>15} {'tok/s':>6} {'forward ms':>15} {'layers ms':>9} "
          f"{'ops/layer':>9} {'ops/forward':>11} | profiled: {'layer µs':>8} {'outside ops':>11}")
    for r in results:
        layer, whole = r["layer"], r["whole"]
        layers_ms = r["forward_ms"] * layer.wall_us * r["num_layers"] / whole.wall_us
        print(f"{r['seqs']:>3} {r['step_ms']:>6.1f} ({r['step_median_ms']:>6.1f}) "
              f"{r['seqs'] * 1e3 / r['step_ms']:>6.1f} {r['forward_ms']:>6.1f} "
              f"({r['forward_median_ms']:>6.1f}) {layers_ms:>9.1f} "
              f"{sum(layer.calls.values()):>9.0f} {sum(whole.calls.values()):>11.0f} | "
              f"{'':>9} {layer.wall_us:>8.0f} {layer.outside_us:>11.0f}")
    print("ms: best (median) of the steps; tok/s: B per best step; layers ms: the best forward "
          "in proportion to the layers' profiled share")
    for r in results:
        layer = r["layer"]
        print(f"\nB={r['seqs']}, one layer under the profiler: {layer.wall_us:.0f} µs, of "
              f"which outside any op {layer.outside_us:.0f} µs")
        print(f"{'class':<12} {'ops':>5} {'µs':>7}   ops (calls per layer)")
        for cls, (calls, micros) in sorted(layer.by_class().items(), key=lambda kv: -kv[1][1]):
            names = sorted((n for n in layer.calls if CLASS_OF.get(n, "other") == cls),
                           key=lambda n: -layer.micros[n])
            listed = ", ".join(f"{n} {layer.calls[n]:g}" for n in names)
            print(f"{cls:<12} {calls:>5.0f} {micros:>7.0f}   {listed}")


def _row(r: dict) -> dict:
    layer = r["layer"]
    return {"seqs": r["seqs"], "step_ms": r["step_ms"], "tok_s": r["seqs"] * 1e3 / r["step_ms"],
            "step_median_ms": r["step_median_ms"], "forward_ms": r["forward_ms"],
            "forward_median_ms": r["forward_median_ms"],
            "num_layers": r["num_layers"], "ops_per_layer": sum(layer.calls.values()),
            "ops_per_forward": sum(r["whole"].calls.values()),
            "profiled_layer_us": layer.wall_us, "outside_ops_layer_us": layer.outside_us,
            "classes_layer": {c: {"ops": n, "us": us} for c, (n, us) in layer.by_class().items()},
            "ops_layer": {n: {"calls": c, "us": layer.micros[n]} for n, c in layer.calls.items()}}


def main(argv: list[str] | None = None) -> int:
    """Prints the tables and appends JSON lines to benchmarks/results/profile_layers.jsonl."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2",
                        help="generated model shape (default smollm2, the demo model's)")
    parser.add_argument("--seqs", type=int, nargs="+", default=[32, 1],
                        help="decode batch sizes B (default 32 1)")
    parser.add_argument("--context", type=int, default=64, help="prompt tokens per sequence")
    parser.add_argument("--steps", type=int, default=20, help="decode steps per round")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of --steps (times: best and median of every step; "
                             "profile: the fastest round)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shape, B = 8, 5 steps, one round")
    args = parser.parse_args(argv)
    if min(*args.seqs, args.context, args.steps, args.repeats) < 1:
        parser.error("--seqs, --context, --steps and --repeats must be >= 1")
    if args.quick:
        args.shape, args.seqs, args.steps, args.repeats = "tiny", [8], 5, 1
    # Kineto wants its first profile on the main thread (else it prints an error when the
    # measuring thread below starts one); this one profiles nothing.
    with profile(activities=[ProfilerActivity.CPU]):
        pass
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_model(pathlib.Path(tmp) / "model", SHAPES[args.shape])
        results = [on_thread(lambda b=b: measure(model_dir, b, args.context, args.steps,
                                                  args.repeats)) for b in args.seqs]
    _print(results, args)
    append_rows("profile_layers", [_row(r) for r in results], shape=args.shape,
                context=args.context, steps=args.steps, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
