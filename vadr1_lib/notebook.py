"""The two cells every notebook shares: set-up after ``parameters``, metrics at the end.

Each notebook ends by writing what it measured to ``runs/<profile>/metrics/<notebook>.json``
so tests, ``run-notebooks`` and the README's results table read numbers, not "it ran".
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
from pathlib import Path
from typing import Any

from vadr1_lib import config, modeling


def setup(profile_name: str, overrides: dict[str, Any] | list[str] | None = None) -> config.Profile:
    """Resolve the profile (``VADR1_PROFILE`` wins, for nbmake in CI), set threads, say what runs."""
    name = config.resolve_profile_name(profile_name)
    if name != profile_name:
        print(f"{config.PROFILE_ENV_VAR}={name} overrides the parameters cell's profile {profile_name!r}")
    profile = config.load_profile(name, overrides)
    modeling.configure_threads(profile)
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
