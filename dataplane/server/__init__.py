"""The worker's gRPC front: Generate, WorkerService, metrics and the `serve` command."""
