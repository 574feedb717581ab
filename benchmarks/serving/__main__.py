"""`python -m benchmarks.serving ...`, the same as `python -m benchmarks serving ...`."""

from benchmarks.serving import main

raise SystemExit(main())
