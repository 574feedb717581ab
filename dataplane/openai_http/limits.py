"""What one HTTP caller may hold of a server: bytes, and time.

Prompts are at most a million characters (dataplane/server/requests.py); a JSON body
beyond MAX_BODY_BYTES is refused with 413 before it is read, whatever Content-Length it
announces. A body must arrive within BODY_SECONDS (408 otherwise), and a streaming client
that reads nothing for STALL_SECONDS is cut off, its request cancelled (its sequence
freed), so a caller that stops reading cannot keep a sequence running.
"""

from __future__ import annotations

MAX_BODY_BYTES = 4 * 1024 * 1024
BODY_SECONDS = 30.0
STALL_SECONDS = 30.0
