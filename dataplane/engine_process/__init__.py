"""The engine process's own code: the loop that owns and steps the engine, the child's
entry point and the builder of what it runs. It runs in the engine process (or, with
`--engine-runs thread`, on the engine thread of the server's process) and imports nothing
of the server's (dataplane/server/), which talks to it through `messages` only."""
