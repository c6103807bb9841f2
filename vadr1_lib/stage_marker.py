"""Whether a training stage's folder holds a finished result, and made with which settings.

Its own module, below both the model code and the training code: loading a trained
adapter reads its stage's record (the mode it was trained in, the base it was trained on),
and the training stages write it, so ``vadr1_lib.model.modeling`` and
``vadr1_lib.training`` both import it from here without importing each other.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class StageMarker:
    """Whether a training stage's folder holds a finished result, and made with which settings.

    A finished stage writes ``vadr1_stage.json`` (its fingerprint, mode, timing and log).
    While it trains, ``pending-fingerprint`` holds the fingerprint of the run in progress,
    so that a later run with the same settings resumes its checkpoints and a run with other
    settings throws them away instead.
    """

    folder: Path
    FILE: ClassVar[str] = "vadr1_stage.json"
    PENDING: ClassVar[str] = "pending-fingerprint"

    def read(self) -> dict[str, Any] | None:
        path = Path(self.folder) / self.FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def finished_with(self, fingerprint: str) -> bool:
        record = self.read()
        return record is not None and record.get("fingerprint") == fingerprint

    def begin(self, fingerprint: str) -> None:
        """Remove a finished or partial result made with other settings, then note this run's."""
        folder = Path(self.folder)
        record = self.read()
        pending = folder / self.PENDING
        stale_result = record is not None and record.get("fingerprint") != fingerprint
        stale_checkpoints = pending.is_file() and pending.read_text().strip() != fingerprint
        if stale_result or stale_checkpoints:
            print(f"{folder} was trained with other settings: starting over")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pending.write_text(fingerprint)

    def finish(self, record: dict[str, Any]) -> None:
        """Mark the stage finished with ``record`` (which must carry its ``fingerprint``)."""
        if "fingerprint" not in record:
            raise ValueError("a stage record needs the fingerprint it was trained with")
        (Path(self.folder) / self.FILE).write_text(json.dumps(record, indent=2) + "\n")
        (Path(self.folder) / self.PENDING).unlink(missing_ok=True)
