"""The worker's configuration, read by both of its processes: the option table (flags.py),
the options as one frozen object (worker_config.py), tenant limits (quotas.py), the memory
formula (sizing.py), the sizes a built worker derives (worker_sizes.py) and `lorafleet plan`."""
