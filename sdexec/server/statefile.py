"""What the server remembers about background processes, across its own restarts.

systemd keeps the units; it does not know a process's RFC 42 identity (label,
exec flags, who started it).  One small JSON file per background unit,
``<state-dir>/procs/<unit>.json``, written before the unit starts and removed
when the process is reaped, carries that identity to the next server.  The
write is atomic (temporary file + rename), so a server killed mid-write
leaves the old file or none.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class ProcRecord:
    unit: str
    label: str | None
    cmdline: list[str]
    flags: int
    local_flags: int
    requester_uid: int
    ident: str


class StateDir:
    def __init__(self, root: Path) -> None:
        self.procs = root / "procs"

    def _path(self, unit: str) -> Path:
        return self.procs / f"{unit}.json"

    def save(self, rec: ProcRecord) -> None:
        self.procs.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._path(rec.unit).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(rec)))
        os.replace(tmp, self._path(rec.unit))

    def remove(self, unit: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(unit).unlink()

    def load_all(self) -> list[ProcRecord]:
        out: list[ProcRecord] = []
        if not self.procs.is_dir():
            return out
        for p in sorted(self.procs.glob("*.json")):
            try:
                out.append(ProcRecord(**json.loads(p.read_text())))
            except (OSError, ValueError, TypeError):
                p.unlink(missing_ok=True)  # unreadable: nothing can be done with it
        return out
