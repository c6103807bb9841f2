"""Interactive views where looking beats reading, each with a static fallback.

With someone at the notebook (``notebook.unattended()`` false) these are ipywidgets: pick a
video, edit a completion. Under papermill or nbmake nobody can click, and widget messages
can stall the kernel exchange, so the same content is shown for a few fixed cases instead.
What they compute is the library's own: the parser, the rewards, the metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from vadr1_lib import notebook, parsing, plots
from vadr1_lib.config import REWARD_NAMES, Profile
from vadr1_lib.data import dataset, taxonomy, video
from vadr1_lib.evaluation import metrics
from vadr1_lib.training import rewards


def reward_breakdown(completion: str, solution: str, profile: Profile, tokenizer: Any, *,
                     video_path: str | None = None,
                     verifier: rewards.AnomalyVerificationReward | None = None) -> pd.DataFrame:
    """The four GRPO rewards of one completion against its weak label, each with why.

    The length bonus is shown as it would be paid in a group where another completion is
    also right (alone, a right completion gets none). AVA is computed when a ``verifier``
    and the ``video_path`` are given: it re-asks the verifier's model on the trimmed clip.
    """
    parsed = parsing.parse_completion(completion)
    label = taxonomy.binary_label(solution)
    accuracy = rewards.accuracy_reward([completion], [solution])[0]
    rows = {"accuracy": (accuracy, f"says {parsed.predicted_label}, the label is {label}" if parsed.which
                         else "no <which>: no verdict to compare")}
    rows["format"] = (rewards.format_reward([completion])[0],
                      f"follows the {'Normal' if parsed.matches_normal_template else 'Abnormal'} template"
                      if parsed.format_valid else "; ".join(parsed.problems[:3]))
    length = rewards.LengthReward(profile.grpo, tokenizer)
    count = length.token_counts([completion], None)[0]
    low, high = length.range_for(label)
    paid = accuracy == 1.0 and length.in_range(count, label)
    rows["length"] = (profile.grpo.length_bonus if paid else 0.0,
                      f"{count} tokens, range for {label} [{low}, {high}]" + ("" if accuracy == 1.0 else "; not right: no bonus")
                      + " (paid only when another completion of the group is right too)")
    if verifier is not None and video_path is not None:
        value = verifier([completion], [solution], [video_path])[0]
        record = verifier.history[-1]
        branch = record["branches"][0]
        if record["checks"]:
            check = record["checks"][0]
            answer = parsing.parse_completion(check["answer"])
            why = (f"{branch} branch: re-asked on frames {check['kept_frames']}, it answered "
                   f"{answer.predicted_label if answer.which else 'without <which>'}")
        else:
            why = f"{branch}: not re-asked"
        rows["ava"] = (value, why)
    else:
        rows["ava"] = (float("nan"), "needs the model and the video: see section 3")
    weights = dict(zip(REWARD_NAMES, profile.grpo.reward_weights or [1.0] * len(REWARD_NAMES)))
    table = pd.DataFrame({name: {"reward": value, "weight": weights[name], "why": why}
                          for name, (value, why) in rows.items()}).T
    total = sum(value * weights[name] for name, (value, _) in rows.items() if not math.isnan(value))
    table.loc["total", ["reward", "weight", "why"]] = [
        total, "", "weighted sum; the group's advantage is this minus the group mean, over its spread"]
    return table


def reward_explorer(profile: Profile, tokenizer: Any, record: dataset.SFTRecord, examples: Mapping[str, str], *,
                    verifier: rewards.AnomalyVerificationReward | None = None) -> None:
    """Edit a completion and see its four rewards and why, against ``record``'s label and video.
    Unattended: the table of each of ``examples`` instead."""
    from IPython.display import display

    solution = record.category if record.is_abnormal else taxonomy.NORMAL_LABEL
    path = str(record.path)

    def show(text: str) -> None:
        with pd.option_context("display.max_colwidth", None):  # the reasons are the point: never cut them
            display(reward_breakdown(text, solution, profile, tokenizer, video_path=path, verifier=verifier))

    if notebook.unattended():
        for name, text in examples.items():
            print(f"--- {name} (label {taxonomy.binary_label(solution)})")
            show(text)
        return
    import ipywidgets as widgets

    choice = widgets.Dropdown(options=list(examples), description="start from")
    editor = widgets.Textarea(value=next(iter(examples.values())), layout=widgets.Layout(width="100%", height="220px"))
    output = widgets.Output()

    def refresh(*_: Any) -> None:
        output.clear_output(wait=True)
        with output:
            show(editor.value)

    choice.observe(lambda change: setattr(editor, "value", examples[change["new"]]), names="value")
    editor.observe(refresh, names="value")
    display(widgets.VBox([widgets.HTML(f"label of this video: <b>{taxonomy.binary_label(solution)}</b>"), choice, editor,
                          output]))
    refresh()


def video_answers(record: dataset.SFTRecord, answers: Mapping[str, str]) -> pd.DataFrame:
    """Per model, what its answer to ``record`` says and how the metrics score it."""
    rows = {}
    for model, text in answers.items():
        parsed = parsing.parse_completion(text)
        says_abnormal = not parsing.release_reads_normal(text)
        rows[model] = {
            "verdict (release reading)": "Abnormal" if says_abnormal else "Normal",
            "right": says_abnormal == record.is_abnormal,
            "<which>": parsed.which, "span": parsed.span, "format valid": parsed.format_valid,
            "release IoU": metrics.release_video_iou(record.is_abnormal, record.span_fraction, says_abnormal,
                                                     parsing.release_reads_span(text)),
            "strict IoU": (metrics.strict_video_iou(record.span_fraction, not parsed.is_normal, parsed.span)
                           if record.is_abnormal else None),
            "answer": (parsed.answer or text)[:160],
        }
    return pd.DataFrame(rows).T


def show_video(record: dataset.SFTRecord, answers: Mapping[str, str], profile: Profile) -> None:
    """One test video: its frames (anomaly frames starred), the truth, each model's answer scored."""
    from IPython.display import display

    clip = video.inference_clip(record.path, profile.video)
    inside = [record.start is not None and record.start <= i < (record.end or 0) for i in clip.indices]
    truth = f"{record.category} {record.span_fraction}" if record.is_abnormal else "Normal"
    plots.frame_grid(clip.frames, [f"{i}{' *' if a else ''}" for i, a in zip(clip.indices, inside)],
                     suptitle=f"{record.id}: truth {truth} (* = anomaly frames)")
    plots.spans_by_model([(record.id, record.span_fraction,
                           {m: parsing.parse_completion(t).span for m, t in answers.items()})])
    display(video_answers(record, answers))


def prediction_browser(records: Sequence[dataset.SFTRecord], answers: Mapping[str, Mapping[str, str]],
                       profile: Profile, *, static_videos: int = 2) -> None:
    """Browse the test videos: frames with the true span, each model's answer and its scores.
    ``answers`` maps model -> video id -> output text. Unattended: the first abnormal and the
    first normal video (``static_videos`` in all) instead of a menu."""
    import matplotlib.pyplot as plt

    def per_model(record: dataset.SFTRecord) -> dict[str, str]:
        return {model: by_id.get(record.id, "") for model, by_id in answers.items()}

    if notebook.unattended():
        abnormal = [r for r in records if r.is_abnormal]
        normal = [r for r in records if not r.is_abnormal]
        for record in [*abnormal[: (static_videos + 1) // 2], *normal[: static_videos // 2]]:
            show_video(record, per_model(record), profile)
            plt.show()
        return
    import ipywidgets as widgets

    names = {f"{r.id} ({r.category if r.is_abnormal else 'Normal'})": r for r in records}

    def show(name: str) -> None:
        show_video(names[name], per_model(names[name]), profile)
        plt.show()

    widgets.interact(show, name=widgets.Dropdown(options=list(names), description="video"))
