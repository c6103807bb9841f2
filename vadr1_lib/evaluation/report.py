"""The README's results table, produced from the metrics JSON of the last run (never typed by hand).

``python -m vadr1_lib report --profile cpu --write-readme`` (run by ``make run``) replaces the
block between the two marker comments in README.md with a table built from
``runs/<profile>/metrics/05_evaluation.json`` and the SFT/GRPO notebooks' timings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vadr1_lib import paths
from vadr1_lib.config import Profile
from vadr1_lib.notebook import load_metrics

START, END = "<!-- results:start -->", "<!-- results:end -->"
COLUMNS = (("format valid", "format.valid_rate"), ("acc.", "detection.accuracy"), ("prec.", "detection.precision"),
           ("rec.", "detection.recall"), ("F1", "detection.f1"), ("mIoU", "temporal.miou"),
           ("mIoU strict", "strict.temporal.miou"), ("BLEU-2", "text.bleu2"), ("METEOR", "text.meteor"),
           ("ROUGE-L", "text.rougeL"))


def results_markdown(profile: Profile) -> str:
    from vadr1_lib.evaluation.scores import figure, skipped_empty_note

    evaluation = load_metrics(profile, "05_evaluation")
    if evaluation is None:
        return f"_No results yet for the `{profile.name}` profile: run `make run` (writes runs/{profile.name}/metrics/)._"
    models = evaluation["metrics"]["models"]
    lines = [f"Measured {evaluation['measured_at']} on the `{profile.name}` profile ({evaluation['machine']}), "
             f"Vad-Reasoning-Mini test split, {evaluation['metrics'].get('test_videos')} videos; "
             "95% bootstrap intervals in brackets.", "",
             "| model | " + " | ".join(name for name, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for model, figures in models.items():
        cells = []
        for _, key in COLUMNS:
            value = figure(figures, key)
            interval = (figure(figures, "strict.ci95") or {}).get(key)
            cells.append("–" if value is None else f"{value:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    notes = [f"{model}: {note}" for model, figures in models.items() if (note := skipped_empty_note(figures))]
    if notes:
        lines += ["", "Text figures: " + "; ".join(notes) + "."]
    timings = []
    for notebook, label in (("03_sft", "SFT"), ("04_ava_grpo", "GRPO / AVA-GRPO")):
        data = load_metrics(profile, notebook)
        if data:
            m = data["metrics"]
            seconds = m.get("train_seconds") or m.get("wall_seconds")
            if isinstance(seconds, dict):
                seconds = " / ".join(f"{v:.0f} s" for v in seconds.values())
            elif seconds is not None:
                seconds = f"{seconds:.0f} s"
            timings.append(f"{label}: {seconds}")
    vane = evaluation["metrics"].get("vane")
    if vane:
        timings.append("VANE-style accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in vane.items() if v is not None))
    if timings:
        lines += ["", "Training time and extra figures: " + "; ".join(timings) + "."]
    lines += _paired_lines(load_metrics(profile, "04_ava_grpo"))
    return "\n".join(lines)


PAIRED_COLUMNS = (("accuracy", "detection.accuracy"), ("F1", "detection.f1"), ("precision", "detection.precision"),
                  ("strict mIoU", "strict.temporal.miou"), ("format valid", "format.valid_rate"))


def _paired_lines(rl: dict[str, Any] | None) -> list[str]:
    """What RL changed on the same test videos, with 95% paired bootstrap intervals."""
    paired = (rl or {}).get("metrics", {}).get("paired")
    if not paired:
        return []
    lines = ["", "What RL changed on the same test videos (difference, 95% paired bootstrap interval):", "",
             "| comparison | " + " | ".join(f"Δ {name}" for name, _ in PAIRED_COLUMNS) + " |",
             "|---|" + "---|" * len(PAIRED_COLUMNS)]
    for label, differences in paired.items():
        cells = [f"{differences[key]['difference']:+.3f} [{differences[key]['ci95'][0]:+.2f}, "
                 f"{differences[key]['ci95'][1]:+.2f}]" if key in differences else "–" for _, key in PAIRED_COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    changed = [f"{label}: {d['fixed']} fixed, {d['broken']} broken"
               + (f", resolvable from ±{d['resolvable']:.3f}" if d["fixed"] + d["broken"] else "")
               for label, d in ((label, differences.get("detection.accuracy", {})) for label, differences in paired.items())
               if "resolvable" in d]
    if changed:
        lines += ["", "Test verdicts each comparison changed (right to wrong or back), and the smallest accuracy "
                  "difference that many changes let this split resolve (`scores.resolvable_accuracy_difference`): "
                  + "; ".join(changed) + "."]
    return lines


def write_readme(profile: Profile, readme: Path | None = None) -> Path:
    readme = readme or paths.PROJECT_ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} block")
    block = f"{START}\n{results_markdown(profile)}\n{END}"
    readme.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))
    return readme
