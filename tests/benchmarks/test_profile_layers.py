"""`python -m benchmarks profile_layers`: finds a layer's ops, and a layer stays lean."""

from __future__ import annotations

import pytest

from benchmarks.profile_layers import _layers_slice, measure
from benchmarks.serving.checkpoint import ModelShape, write_model

SHAPE = ModelShape(64, 3, 4, 2, 128, 384)  # three layers: seconds, not minutes
# Top-level ops one decoder layer runs in a decode step on CPU (issue 26: 67 before the
# fused norms, rotary in place and cache views looked up once per step; 39 after).
MAX_OPS_PER_LAYER = 40


def test_layers_are_found_between_the_models_own_ops():
    bare = ["embedding", "index", "index", "rms_norm", "mm"]
    layer = ["rms_norm", "mm", "index", "add_"]
    full = bare[:3] + layer * 3 + bare[3:]
    assert full[_layers_slice(full, bare)] == layer * 3
    with pytest.raises(RuntimeError):
        _layers_slice(["embedding", "mm"], bare)


@pytest.mark.parametrize("num_seqs", [4, 1])
def test_a_decode_layer_runs_few_ops(tmp_path, num_seqs):
    model_dir = write_model(tmp_path / "model", SHAPE)
    result = measure(model_dir, num_seqs, context=20, steps=2, repeats=1)
    layer = result["layer"]
    assert result["num_layers"] == SHAPE.num_layers
    assert layer.calls["_linear_pointwise"] == pytest.approx(4)  # q|k|v, o, gate|up, down
    assert sum(layer.calls.values()) <= MAX_OPS_PER_LAYER
    assert layer.wall_us > 0 and result["step_ms"] > 0
