"""Multi-adapter serving on a worker: the three-tier adapter cache, device slots, and the
per-step LoRA context the model applies at its projections."""
