"""py-spy sampling of a candidate under load: collapsed stacks, top functions, speedscope."""

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PROCESS_FRAME = re.compile(r"^process \d+:")
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")

Stack = tuple[tuple[str, ...], int]  # frames from the root outwards, sample count


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def py_spy_command(
    py_spy: str, pid: int, duration_s: float, output: Path, rate_hz: int = 200
) -> list[str]:
    """Record ``pid`` and its subprocesses as collapsed stacks, one frame per function."""
    return [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--function",
        "--rate",
        str(rate_hz),
        "--format",
        "raw",
        "--duration",
        str(max(1, round(duration_s))),
        "--output",
        str(output),
    ]


def parse_collapsed(text: str) -> list[Stack]:
    """Parse ``frame;frame;frame count`` lines (py-spy ``--format raw``), dropping the
    per-process root frames ``--subprocesses`` adds."""
    stacks: list[Stack] = []
    for line in text.splitlines():
        frames_text, _, count = line.rstrip().rpartition(" ")
        if not frames_text or not count.isdigit():
            continue
        frames = tuple(f for f in frames_text.split(";") if not _PROCESS_FRAME.match(f))
        if frames:
            stacks.append((frames, int(count)))
    return stacks


@dataclass(frozen=True)
class FunctionStat:
    """Samples in which a function was running (own) or on the stack at all (total)."""

    name: str
    own: int
    total: int


def function_stats(stacks: Sequence[Stack]) -> list[FunctionStat]:
    """Own and total samples per frame, most own samples first."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        for frame in set(frames):  # a recursive function counts once per sample
            total[frame] += count
    stats = [FunctionStat(name, own[name], total[name]) for name in total]
    return sorted(stats, key=lambda s: (-s.own, -s.total, s.name))


def format_top(stats: Sequence[FunctionStat], samples: int, limit: int, title: str) -> str:
    """A ``py-spy top``-like text table: by own samples, then by total samples."""

    def table(rows: Sequence[FunctionStat]) -> list[str]:
        out = [f"{'own%':>6} {'total%':>7} {'own':>7} {'total':>7}  function"]
        for s in rows:
            own_pct, total_pct = 100 * s.own / samples, 100 * s.total / samples
            out.append(f"{own_pct:6.1f} {total_pct:7.1f} {s.own:7d} {s.total:7d}  {s.name}")
        return out

    if not samples:
        return f"{title}\n(no samples)\n"
    by_total = sorted(stats, key=lambda s: (-s.total, -s.own, s.name))
    lines = [title, f"{samples} samples", "", f"Top {limit} by own samples:"]
    lines += table(stats[:limit])
    lines += ["", f"Top {limit} by total samples:"]
    lines += table(by_total[:limit])
    return "\n".join(lines) + "\n"


def speedscope_document(stacks: Sequence[Stack], name: str) -> dict[str, Any]:
    """The stacks as a speedscope 'sampled' profile (https://www.speedscope.app)."""
    index: dict[str, int] = {}
    frames: list[dict[str, Any]] = []
    samples: list[list[int]] = []
    weights: list[int] = []
    for stack, count in stacks:
        for frame in stack:
            if frame not in index:
                index[frame] = len(frames)
                match = _FRAME.match(frame)
                entry: dict[str, Any] = {"name": match["name"] if match else frame}
                if match:
                    entry["file"] = match["file"]
                    if match["line"]:
                        entry["line"] = int(match["line"])
                frames.append(entry)
        samples.append([index[frame] for frame in stack])
        weights.append(count)
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": name,
                "unit": "none",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        ],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "gateway benchmarks/profiling.py",
    }


def start_py_spy(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a py-spy recording; its own messages go to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
