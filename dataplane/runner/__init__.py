"""The model runner: owns every tensor (weights, KV cache, sampling state) of a worker."""
