"""CPU-seconds per process, from the processes' own accounting (/proc/<pid>/stat), so a
benchmark can say what each process spent on the work it measured.

A Postgres server is counted whole: the postmaster, every process it started (backends,
WAL writer, checkpointer…) and, through the postmaster's cutime/cstime, the backends that
exited meanwhile (a connection closed mid-run still counts).
"""

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def own_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime (+ cutime + cstime: waited-for children) in seconds; 0 if gone."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


@dataclass
class Meter:
    """CPU-seconds of named processes between start() and stop(). A name maps to a pid, or
    to ("postgres", postmaster pid) for a whole server."""

    processes: Mapping[str, int]
    postgres: Mapping[str, int]

    def _sample(self) -> dict[str, float]:
        sample = {name: own_seconds(pid) for name, pid in self.processes.items()}
        for name, postmaster in self.postgres.items():
            sample[name] = own_seconds(postmaster, children=True) + sum(
                own_seconds(child) for child in children_of(postmaster)
            )
        return sample

    def start(self) -> None:
        self._before = self._sample()

    def stop(self) -> dict[str, float]:
        after = self._sample()
        return {name: after[name] - self._before.get(name, 0.0) for name in after}


def per_item_table(spent: Mapping[str, float], items: int, label: str) -> Iterable[str]:
    """Markdown rows: process, CPU-seconds, ms per item."""
    yield f"| process | CPU s | ms per {label} |"
    yield "|---|---:|---:|"
    for name, seconds in spent.items():
        yield f"| {name} | {seconds:.2f} | {seconds / max(items, 1) * 1000:.2f} |"
