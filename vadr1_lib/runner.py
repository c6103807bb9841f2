"""Run the notebooks unattended with papermill: ``python -m vadr1_lib run-notebooks``.

The executed copies go to ``runs/<profile>/notebooks/``; each notebook receives the profile
name and the overrides through its ``parameters`` cell, exactly as a student would set them.
The run stops at the first failing notebook and says which notebook and which cell failed.
Stages cache their outputs (:mod:`vadr1_lib.stages`), so rerunning after a failure or an
interruption redoes only what is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vadr1_lib import config, paths
from vadr1_lib import notebook as notebook_module


@dataclass
class NotebookRun:
    notebook: str
    seconds: float
    output: Path
    metrics_file: Path | None
    error: str | None = None


class NotebookFailed(RuntimeError):
    def __init__(self, runs: list[NotebookRun]) -> None:
        failed = runs[-1]
        super().__init__(f"{failed.notebook} failed at {failed.error} (executed copy with the traceback: {failed.output})")
        self.runs = runs


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    """The ordered notebooks, optionally only those whose number prefix is in ``only`` (``["03", "04"]``)."""
    notebooks = sorted(paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {o.strip().zfill(2) for o in only}
        unknown = wanted - {p.name[:2] for p in notebooks}
        if unknown:
            raise ValueError(f"no notebook numbered {', '.join(sorted(unknown))}; have {', '.join(p.name for p in notebooks)}")
        notebooks = [p for p in notebooks if p.name[:2] in wanted]
    return notebooks


PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}


def _failing_cell(output: Path) -> str:
    """Which cell of the notebook raised: its index in the source notebook and first line.

    Papermill adds cells to the executed copy (injected parameters, error banners); they
    are not counted, so the index is the one a student sees in the notebook they opened.
    """
    try:
        cells = json.loads(output.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return "unknown cell"
    source_cells = [c for c in cells if not PAPERMILL_TAGS & set(c.get("metadata", {}).get("tags", []))]
    for index, cell in enumerate(source_cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first = "".join(cell.get("source", "")).strip().splitlines()
                return f"cell {index} ({first[0][:60] if first else ''!r}): {out.get('ename')}: {out.get('evalue')}"
    return "unknown cell"


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """Set (or, with None, remove) an environment variable for the kernels of one run, then
    restore it. The kernel inherits this process's environment: ``VADR1_PROFILE`` (set for
    nbmake) would override the profile passed as a parameter, so it is removed."""
    saved = os.environ.pop(name, None)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if saved is not None:
            os.environ[name] = saved


def run_notebooks(profile_name: str, *, only: list[str] | None = None, overrides: list[str] | None = None,
                  log=print) -> list[NotebookRun]:
    import papermill

    profile = config.load_profile(profile_name, overrides)  # fail early on a bad name or key
    out_dir = profile.run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters: dict[str, Any] = {"profile": profile.name, "overrides": config.parse_overrides(overrides)}
    runs: list[NotebookRun] = []
    for notebook in notebook_paths(only):
        output = out_dir / notebook.name
        metrics_file = profile.metrics_dir / f"{notebook.stem}.json"
        log(f"--> {notebook.name} (profile {profile.name})")
        start = time.perf_counter()
        try:
            with _environment(config.PROFILE_ENV_VAR, None), _environment(notebook_module.UNATTENDED_ENV, "1"):
                papermill.execute_notebook(str(notebook), str(output), parameters=parameters,
                                           cwd=str(paths.NOTEBOOKS_DIR), kernel_name="python3", progress_bar=False)
        except Exception as exc:  # papermill wraps the kernel's error; name the cell
            run = NotebookRun(notebook.name, time.perf_counter() - start, output, None,
                              error=_failing_cell(output) if output.is_file() else str(exc))
            runs.append(run)
            raise NotebookFailed(runs) from exc
        runs.append(NotebookRun(notebook.name, time.perf_counter() - start, output,
                                metrics_file if metrics_file.is_file() else None))
        log(f"    done in {runs[-1].seconds:.0f} s")
    return runs


def summary(runs: list[NotebookRun]) -> str:
    lines = [f"{'notebook':34s} {'seconds':>8s}  metrics"]
    for run in runs:
        status = str(run.metrics_file) if run.metrics_file else ("FAILED: " + run.error if run.error else "none written")
        lines.append(f"{run.notebook:34s} {run.seconds:8.1f}  {status}")
    lines.append(f"{'total':34s} {sum(r.seconds for r in runs):8.1f}")
    return "\n".join(lines)
