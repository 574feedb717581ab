"""Engine core: request state, paged KV block allocator, scheduler, engine loop.

Pure Python (no torch): every tensor lives in `lorafleet.dataplane.runner`.
"""
