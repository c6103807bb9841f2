"""The two cells every notebook shares: set-up after ``parameters``, metrics at the end.

Each notebook ends by writing what it measured to ``runs/<profile>/metrics/<notebook>.json``
so tests, ``run-notebooks`` and the README's results table read numbers, not "it ran".
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

from vadr1_lib import config

# Where a hosted notebook keeps what must outlive its session: a disconnect wipes the
# machine, so runs (checkpoints) and data go to persistent storage.
COLAB_DRIVE = Path("/content/drive")  # where Google Drive is mounted on Colab
HOSTED_STORAGE = {"colab": COLAB_DRIVE / "MyDrive" / "vadr1", "kaggle": Path("/kaggle/working/vadr1")}


def hosted_platform() -> str | None:
    """``"colab"`` or ``"kaggle"`` when this kernel runs there, else None."""
    if "google.colab" in sys.modules:
        return "colab"
    return "kaggle" if "KAGGLE_KERNEL_RUN_TYPE" in os.environ else None


def use_hosted_storage() -> Path | None:
    """On Colab or Kaggle, put runs, data and the release's annotation files on storage that
    survives the session (Colab: Google Drive, mounted here; Kaggle: /kaggle/working), unless
    ``VADR1_RUNS`` / ``VADR1_DATA`` / ``VADR1_RELEASE_DIR`` already say where. Elsewhere nothing."""
    platform_name = hosted_platform()
    if platform_name is None:
        return None
    root = HOSTED_STORAGE[platform_name]
    if platform_name == "colab" and not (COLAB_DRIVE / "MyDrive").is_dir():
        from google.colab import drive

        drive.mount(str(COLAB_DRIVE))
    for variable, folder in (("VADR1_RUNS", "runs"), ("VADR1_DATA", "data"), ("VADR1_RELEASE_DIR", "vad-reasoning")):
        os.environ.setdefault(variable, str(root / folder))
    print(f"{platform_name}: runs, data and the release files under {root} (put the release's JSONL files in "
          f"{os.environ['VADR1_RELEASE_DIR']}, its videos in {os.environ['VADR1_DATA']}/vad-reasoning-videos)")
    return root


UNATTENDED_ENV = "VADR1_UNATTENDED"  # set by run-notebooks (papermill) and `make test` (nbmake)


def unattended() -> bool:
    """True when nobody is looking: papermill or nbmake runs the notebook. Interactive
    widgets then show a static figure instead: they need a live front end, and on a loaded
    machine their messages hung papermill's exchange with the kernel (seen twice here)."""
    return os.environ.get(UNATTENDED_ENV) == "1"


def setup(profile_name: str, overrides: dict[str, Any] | list[str] | None = None) -> config.Profile:
    """Resolve the profile (``VADR1_PROFILE`` wins, for nbmake in CI), use persistent storage
    on a hosted notebook, set threads, say what runs."""
    use_hosted_storage()
    name = config.resolve_profile_name(profile_name)
    if name != profile_name:
        print(f"{config.PROFILE_ENV_VAR}={name} overrides the parameters cell's profile {profile_name!r}")
    profile = config.load_profile(name, overrides)
    from vadr1_lib.model import modeling  # here: reading metrics needs no torch

    modeling.configure_threads(profile)
    from vadr1_lib import paths, plots  # here: metrics-only callers need no matplotlib

    plots.save_figures_to(paths.figures_dir(profile.run_dir))
    print(f"profile {profile.name!r}: {profile.description.strip()}")
    print(f"outputs under {profile.run_dir}")
    return profile


def _finite(value: Any) -> Any:
    """JSON has no NaN: a metric that could not be computed is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def save_metrics(profile: config.Profile, notebook_name: str, metrics: dict[str, Any]) -> Path:
    """Write ``runs/<profile>/metrics/<notebook_name>.json`` with when and where it was measured."""
    record = {
        "notebook": notebook_name,
        "profile": profile.name,
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "metrics": _finite(metrics),
    }
    path = profile.metrics_dir / f"{notebook_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    print(f"metrics written to {path}")
    return path


def load_metrics(profile: config.Profile, notebook_name: str) -> dict[str, Any] | None:
    path = profile.metrics_dir / f"{notebook_name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def variant(profile: config.Profile, name: str, overrides: dict[str, Any] | list[str] | None = None) -> config.Profile:
    """``profile`` with ``overrides`` on top of its own, as the variant ``name``: its stages
    train into ``runs/<profile>/variants/<name>/`` and leave the chapter's checkpoints alone
    (an exercise that retrained ``runs/cpu/sft`` would make the next chapter retrain it back)."""
    merged = {**config.parse_overrides(list(profile.overrides)), **config.parse_overrides(overrides)}
    result = config.load_profile(profile.name, merged, variant=name)
    from vadr1_lib.model import modeling  # as in setup: a variant's launch.torch_threads applies too

    modeling.configure_threads(result)
    print(f"variant {name!r} of {profile.name!r} ({', '.join(f'{k}={v!r}' for k, v in merged.items()) or 'no overrides'}): "
          f"outputs under {result.run_dir}")
    return result
