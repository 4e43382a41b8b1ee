"""Entry point: ``python benchmarks/run.py --help`` (or ``python -m benchmarks.run``)."""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository root importable so `benchmarks.*` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import main

if __name__ == "__main__":
    sys.exit(main())
