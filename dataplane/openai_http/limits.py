"""What one HTTP caller may hold of a server: bytes, and time.

A new connection must send a whole request head (request line and headers) within
HEAD_SECONDS, and a kept-alive connection is closed after HEAD_SECONDS without a request,
so a caller trickling header lines cannot hold connections open. Prompts are at most a million characters (dataplane/server/requests.py); a JSON body
beyond MAX_BODY_BYTES is refused with 413 before it is read, whatever Content-Length it
announces. A body must arrive within BODY_SECONDS (408 otherwise), and a streaming client
that reads nothing for STALL_SECONDS is cut off, its request cancelled (its sequence
freed), so a caller that stops reading cannot keep a sequence running.
"""

from __future__ import annotations

MAX_BODY_BYTES = 4 * 1024 * 1024
HEAD_SECONDS = 10.0
BODY_SECONDS = 30.0
STALL_SECONDS = 30.0
