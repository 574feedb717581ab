"""lorafleet: serve many LoRA adapters on one base model across a fleet of workers.

This package root also holds the generated gRPC stubs (lorafleet.<api>.v1); the
components are lorafleet.clients, .controlplane, .dataplane and .kernels.
"""

__version__ = "0.1.0"
