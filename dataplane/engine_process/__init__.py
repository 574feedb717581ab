"""The engine process's own code: the loop that owns and steps the engine (loop.py), the
child's entry point (main.py) and the builder of what it runs (build.py). It runs in the
engine process (or, with `--engine-runs thread`, on the engine thread of the server's
process). The server (dataplane/server/) talks to it through messages.py; nothing here
imports the server's code but the worker's options a WorkerConfig carries."""
