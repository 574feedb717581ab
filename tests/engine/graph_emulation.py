"""CUDA graphs emulated on the CPU, to check what replaying a captured decode step does.

A CUDA graph records a step's launches once — each kernel with its grid, its scalar
arguments and the addresses of its tensors — and replays exactly those. A step is safe to
capture only if nothing it computes on the host can change between replays: a shape, a
Python int read from a tensor, a segment table built from this step's adapters, a tensor
made from a Python list. Such a value is baked into the graph, and the replay is silently
wrong when it changes (SGLang sized a LoRA grid by the adapters seen at capture).

`Recording` does the same on the CPU: every aten op (through a TorchDispatchMode) and
every Triton launch (the interpreter's, TRITON_INTERPRET=1) of the captured forward pass
is recorded with the very tensors it read and wrote, and `replay()` runs the same ops on
the same tensors again: in-place ops mutate them again, other ops' results are copied
into the tensors the capture produced (the graph's fixed addresses), views are kept
(they alias storage that is updated anyway). Scalars and shapes stay what they were at
capture. Like `torch.cuda.set_sync_debug_mode("error")` during capture, reading a tensor's
value on the host, an op whose output shape depends on values, or a tensor made from host
data inside the step raises `HostDependenceError`.

`EmulatedGraphs` is `DecodeGraphs` with its capture done by a `Recording`, so the
runner's real buffers, buckets and padding are exercised; the tests compare its tokens
with transformers + peft.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lorafleet.dataplane.runner import graphs as graphs_module
from lorafleet.dataplane.runner.graphs import DecodeGraphs, GraphShape

# Ops a captured step may not run: each needs a value on the host (a sync), or makes an
# output whose shape depends on values, or copies host data into the step.
_HOST_DEPENDENT = {
    "aten::_local_scalar_dense": "reads a tensor's value on the host (.item(), int(), bool())",
    "aten::nonzero": "makes an output whose size depends on values",
    "aten::masked_select": "makes an output whose size depends on values",
    "aten::_unique2": "makes an output whose size depends on values",
    "aten::unique_consecutive": "makes an output whose size depends on values",
    "aten::unique_dim": "makes an output whose size depends on values",
    "aten::lift_fresh": "makes a tensor from host data (torch.tensor(...)) inside the step",
    "aten::equal": "compares tensors on the host",
}


class HostDependenceError(RuntimeError):
    """The captured step did something a CUDA graph cannot replay."""


@dataclasses.dataclass
class _Op:
    run: object  # callable(*args, **kwargs)
    args: tuple
    kwargs: dict
    outputs: tuple  # tensors the capture produced, refilled on replay; () for in-place ops


class Recording(TorchDispatchMode):
    """Records the ops run inside it; `replay()` runs them again on the same tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[_Op] = []
        self._in_kernel = False
        self._original_run = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._in_kernel:  # the interpreter's own copies around a kernel
            return func(*args, **kwargs)
        name = func._schema.name
        if name in _HOST_DEPENDENT:
            raise HostDependenceError(f"{func} {_HOST_DEPENDENT[name]}")
        out = func(*args, **kwargs)
        schema = func._schema
        if schema.is_mutable:  # in place or out=: running it again writes the same tensors
            self.ops.append(_Op(func, args, kwargs, ()))
        elif not any(r.alias_info is not None for r in schema.returns):
            outputs = out if isinstance(out, (tuple, list)) else (out,)
            self.ops.append(_Op(func, args, kwargs, tuple(
                t for t in outputs if isinstance(t, torch.Tensor))))
        return out  # views alias what is refilled: nothing to do again

    def __enter__(self):
        from triton.runtime.interpreter import InterpretedFunction

        self._original_run = original = InterpretedFunction.run
        recording = self

        def recorded_run(kernel, *args, grid, warmup, **kwargs):
            if not warmup:
                recording.ops.append(_Op(_Launch(original, kernel, grid), args, kwargs, ()))
            return recording._launch(original, kernel, grid, warmup, args, kwargs)

        InterpretedFunction.run = recorded_run
        return super().__enter__()

    def __exit__(self, *exc):
        from triton.runtime.interpreter import InterpretedFunction

        InterpretedFunction.run = self._original_run
        return super().__exit__(*exc)

    def _launch(self, original, kernel, grid, warmup, args, kwargs):
        self._in_kernel = True
        try:
            return original(kernel, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            self._in_kernel = False

    def replay(self) -> None:
        """Runs every recorded op again, in order, on the recorded tensors."""
        with torch.no_grad():
            for op in self.ops:
                result = op.run(*op.args, **op.kwargs)
                if op.outputs:
                    results = result if isinstance(result, (tuple, list)) else (result,)
                    results = [t for t in results if isinstance(t, torch.Tensor)]
                    for captured, fresh in zip(op.outputs, results, strict=True):
                        captured.copy_(fresh)


@dataclasses.dataclass(frozen=True)
class _Launch:
    """A Triton launch as a graph holds it: the kernel, its grid, run again on replay."""

    original: object
    kernel: object
    grid: object

    def __call__(self, *args, **kwargs):
        return self.original(self.kernel, *args, grid=self.grid, warmup=False, **kwargs)


class EmulatedGraphs(DecodeGraphs):
    """DecodeGraphs on the CPU with graphs: captured by a `Recording`, replayed by it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.use_graphs = True
        self.captures: list[tuple[int, bool]] = []

    def _capture(self, bucket: int, has_lora: bool):
        recording = Recording()
        with torch.no_grad(), recording:
            logits = self._forward(bucket, has_lora)
        captured = graphs_module._Captured(recording, logits)
        self._graphs[(bucket, has_lora)] = captured
        self.captures.append((bucket, has_lora))
        return captured


def attach_emulated_graphs(runner, *, scratch_block: int, block_size: int, max_num_seqs: int,
                           max_context: int) -> EmulatedGraphs:
    """As `attach_decode_graphs`, with emulated graphs."""
    adapters = runner.adapters
    runner.graphs = EmulatedGraphs(
        runner.model, runner.kv_cache,
        GraphShape(max_num_seqs, block_size,
                   min(max_context, runner.model.config.max_position_embeddings)),
        scratch_block=scratch_block, sliding_window=runner.builder.sliding_window,
        lora_step=adapters.step if adapters is not None else None, use_graphs=True)
    return runner.graphs
