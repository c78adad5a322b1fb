"""What survives a restart of the sidecar: one record per pod (`<work_dir>/records/<uid>.json`,
0600), written before the job is submitted and updated with its id after.

A record without a job id is a create that may or may not have reached Slurm: the next process
looks for a job with the pod's comment, adopts it when there is one, and otherwise rolls the
create back (its caller, never answered, creates the pod again). That order is what makes a crash
at any point leave neither a duplicate job nor an orphan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kod import wire
from kod.files import write_private


@dataclass
class Record:
    request: wire.PodCreateRequest
    job_id: str | None = None
    deleting: bool = False

    def dump(self) -> str:
        return json.dumps({"request": self.request.model_dump(mode="json", exclude_none=True),
                           "job_id": self.job_id, "deleting": self.deleting})


class Records:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, uid: str) -> Path:
        return self.root / f"{uid}.json"

    def save(self, record: Record) -> None:
        write_private(self.path(record.request.pod.metadata.uid), record.dump())

    def remove(self, uid: str) -> None:
        self.path(uid).unlink(missing_ok=True)

    def load_all(self) -> list[Record]:
        out = []
        if not self.root.exists():
            return out
        for p in sorted(self.root.glob("*.json")):
            try:
                raw = json.loads(p.read_text())
                out.append(Record(wire.PodCreateRequest.model_validate(raw["request"]), raw.get("job_id"),
                                  bool(raw.get("deleting"))))
            except (OSError, ValueError, KeyError):
                p.unlink(missing_ok=True)
        return out
