"""The identity a worker reports for its base model (adapters must match it)."""

from __future__ import annotations

import hashlib
import pathlib

from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.worker.v1 import worker_service_pb2 as pb

_HEADER_PREFIX_BYTES = 8


def checkpoint_digest(model_dir: pathlib.Path) -> str:
    """sha256 over config.json and each weight file's name, size and safetensors header.

    Cheap at start even for large checkpoints (no full read of the weights), and it
    changes whenever the config, the tensor layout or a file's size changes.
    """
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as f:
            size_bytes = f.read(_HEADER_PREFIX_BYTES)
            header = f.read(int.from_bytes(size_bytes, "little"))
        digest.update(path.name.encode() + b"\0" + str(path.stat().st_size).encode() + header)
    return digest.hexdigest()


def base_model_of(model_dir: pathlib.Path, config: ModelConfig, *, name: str,
                  dtype: str, max_context: int) -> pb.BaseModel:
    """The BaseModel message describing this worker's checkpoint."""
    return pb.BaseModel(
        name=name, digest=checkpoint_digest(model_dir), architecture=config.architecture,
        hidden_size=config.hidden_size, num_layers=config.num_layers,
        vocab_size=config.vocab_size, max_context=max_context, dtype=dtype)
