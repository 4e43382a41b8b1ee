"""CPU time of a process tree, read from Linux's /proc (utime + stime, children included)."""

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the benchmark needs; times in clock ticks."""

    pid: int
    ppid: int
    ticks: int  # utime + stime + cutime + cstime (the last two: children already reaped)


def parse_proc_stat(text: str) -> ProcStat:
    """Parse one ``/proc/PID/stat`` line (the command name may hold spaces and parens)."""
    pid_part, _, rest = text.partition(" (")
    fields = rest[rest.rindex(")") + 2 :].split()
    # After the name: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return ProcStat(pid=int(pid_part), ppid=ppid, ticks=utime + stime + cutime + cstime)


def tree_ticks(stats: list[ProcStat], root: int) -> int:
    """Sum the ticks of ``root`` and all its descendants among ``stats``."""
    children: dict[int, list[ProcStat]] = {}
    by_pid: dict[int, ProcStat] = {}
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat)
        by_pid[stat.pid] = stat
    if root not in by_pid:
        return 0
    total, pending = 0, [by_pid[root]]
    while pending:
        stat = pending.pop()
        total += stat.ticks
        pending.extend(children.get(stat.pid, ()))
    return total


def _all_stats() -> list[ProcStat]:
    stats = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stats.append(parse_proc_stat((entry / "stat").read_text()))
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return stats


def tree_cpu_seconds(*roots: int) -> float:
    """CPU seconds (user + system) used so far by the process trees under ``roots``."""
    stats = _all_stats()
    ticks = sum(tree_ticks(stats, root) for root in roots)
    return ticks / os.sysconf("SC_CLK_TCK")
