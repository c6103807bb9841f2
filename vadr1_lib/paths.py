"""Where things live on disk.

Every path the library touches is derived here, so that a cluster user can move data
and runs elsewhere with two environment variables instead of editing code:

- ``VADR1_DATA``: downloaded and generated data (default: ``<project>/data``).
- ``VADR1_RUNS``: checkpoints, logs, metrics and executed notebooks (default: ``<project>/runs``).
- ``VADR1_FIGURES``: the notebooks' figures (default: ``figures/`` inside the profile's run
  folder, so another run folder or profile never overwrites them).
- ``VADR1_RELEASE_DIR``: the real Vad-Reasoning annotation files (default:
  ``<project>/../shared/vad-reasoning``, where CI and the developers have them).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = PROJECT_ROOT / "configs"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"

RELEASE_SFT_FILE = "Vad-Reasoning-SFT-train.jsonl"
RELEASE_RL_FILE = "Vad-Reasoning-RL.jsonl"
RELEASE_TEST_FILE = "Vad-Reasoning-test.jsonl"  # the release names its test split otherwise: rename it to this


def data_dir() -> Path:
    return Path(os.environ.get("VADR1_DATA", PROJECT_ROOT / "data"))


def runs_dir() -> Path:
    return Path(os.environ.get("VADR1_RUNS", PROJECT_ROOT / "runs"))


def figures_dir(run_dir: Path | None = None) -> Path:
    """``VADR1_FIGURES`` if set, else ``<run_dir>/figures`` (``<runs>/figures`` without a run folder)."""
    if os.environ.get("VADR1_FIGURES"):
        return Path(os.environ["VADR1_FIGURES"])
    return (run_dir if run_dir is not None else runs_dir()) / "figures"


def release_dir() -> Path:
    return Path(os.environ.get("VADR1_RELEASE_DIR", PROJECT_ROOT.parent / "shared" / "vad-reasoning"))


def release_file(name: str) -> Path | None:
    """The path of one real release file, or None when it is not on this machine."""
    path = release_dir() / name
    return path if path.is_file() else None
