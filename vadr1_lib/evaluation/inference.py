"""Generation: one video from the command line, or a whole split into a predictions file."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vadr1_lib import parsing, prompts
from vadr1_lib.progress import TextProgress
from vadr1_lib.config import Profile
from vadr1_lib.data import dataset, video
from vadr1_lib.model import modeling


@dataclass(frozen=True)
class GenerationResult:
    text: str
    new_tokens: int
    seconds: float
    frames: int
    video_tokens: int


def chat_messages(prompt_kind: str = "p2c", prompt_text: str | None = None) -> list[dict]:
    """System + user turn with one video slot; ``prompt_text`` replaces the user instruction."""
    messages = prompts.build_messages(prompt_kind)
    if prompt_text is not None:
        messages[-1]["content"][-1]["text"] = prompt_text
    return messages


@torch.no_grad()
def generate_for_video(model_dir: Path | str, video_path: Path, profile: Profile, *, prompt: str | None = None,
                       max_new_tokens: int | None = None) -> GenerationResult:
    """Greedy completion of one model for one video (the ``generate`` command)."""
    clip = video.inference_clip(video_path, profile.video)  # fails fast on a bad video, before loading a model
    model, processor = modeling.load_model_and_processor(model_dir, profile)
    model.eval()
    text = processor.apply_chat_template(chat_messages(prompt_text=prompt), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], return_tensors="pt", **modeling.video_inputs([clip])).to(model.device)
    kwargs = modeling.generation_kwargs(processor, max_new_tokens or profile.eval.max_new_tokens)
    print(f"generating up to {kwargs['max_new_tokens']} tokens for {Path(video_path).name} ...", flush=True)
    start = time.perf_counter()
    output = model.generate(**inputs, **kwargs)
    seconds = time.perf_counter() - start
    new = output[0, inputs["input_ids"].shape[1]:]
    return GenerationResult(
        text=processor.decode(new, skip_special_tokens=True),
        new_tokens=int(new.numel()),
        seconds=seconds,
        frames=len(clip.frames),
        video_tokens=int((inputs["input_ids"] == model.config.video_token_id).sum()),
    )


# ---------------------------------------------------------------------------------------
# A split -> predictions JSONL


@dataclass
class InferenceReport:
    out: Path
    written: int  # rows written by this call
    already_done: int  # rows found from an earlier (interrupted) run and skipped
    skipped: list[tuple[str, str]]  # (id, reason) for videos that could not be read
    seconds: float
    new_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """Rows of a predictions file. A torn last line (killed mid-write) is dropped, not fatal."""
    rows = []
    if not path.is_file():
        return rows
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not valid JSON (only a torn last line is tolerated)") from None
    return rows


def _prediction_row(record: Any, kind: str, text: str, new_tokens: int, seconds: float, model: str) -> dict[str, Any]:
    parsed = parsing.parse_completion(text, kind=kind)
    return {
        "id": record.id,
        "source": record.source,
        "video": record.video,
        "prompt_kind": kind,
        "model": model,
        "text": text,
        "parsed": {
            "which": parsed.which, "what": parsed.what, "when": list(parsed.span) if parsed.span else None,
            "where": parsed.where, "why": parsed.why, "how": parsed.how,
            "predicted_label": parsed.predicted_label, "format_valid": parsed.format_valid,
            "problems": list(parsed.problems),
        },
        "new_tokens": new_tokens,
        "seconds": round(seconds, 4),
    }


def predict_split(model_dir: str | Path, data_file: Path, out_file: Path, profile: Profile, *, prompt_kind: str = "p2c",
                  video_root: Path | None = None, limit: int | None = None, progress: bool = True,
                  loaded: tuple[Any, Any] | None = None) -> InferenceReport:
    """Generate for every video of a split and append one JSON line per video to ``out_file``.

    Resumable: ids already in ``out_file`` are skipped, and each batch is flushed to disk
    before the next starts, so an interrupted run loses at most the batch in flight.
    Greedy or sampled decoding comes from the profile's ``eval`` section. A video that
    cannot be read is skipped and reported, not fatal.
    """
    prompts.user_prompt(prompt_kind)  # a bad kind fails before any work
    records = dataset.load_split(Path(data_file), video_root=video_root)
    if limit is not None and limit > 0:
        records = records[:limit]
    out_file = Path(out_file)
    existing = read_predictions(out_file)
    other_kinds = {row.get("prompt_kind") for row in existing} - {prompt_kind}
    if other_kinds:
        raise ValueError(f"{out_file} holds {sorted(map(str, other_kinds))} predictions; write {prompt_kind!r} ones elsewhere")
    done = {row["id"] for row in existing}
    if out_file.is_file():  # rewrite without a torn last line before appending
        _write_rows(out_file, existing)
    todo = [r for r in records if r.id not in done]
    report = InferenceReport(out_file, 0, len(records) - len(todo), [], 0.0, 0)
    if not todo:
        return report
    model, processor = loaded or modeling.load_model_and_processor(model_dir, profile)
    model.eval()
    processor.tokenizer.padding_side = "left"  # batched generation continues every row at the right edge
    text = processor.apply_chat_template(chat_messages(prompt_kind), add_generation_prompt=True, tokenize=False)
    ev = profile.eval
    kwargs = modeling.generation_kwargs(processor, ev.max_new_tokens, do_sample=ev.do_sample, temperature=ev.temperature,
                                        top_p=ev.top_p)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    bar = TextProgress(len(todo), f"infer {Path(data_file).name}", "video", enabled=progress)
    for first in range(0, len(todo), ev.batch_size):
        batch, clips = [], []
        for record in todo[first:first + ev.batch_size]:
            try:
                clips.append(video.inference_clip(record.path, profile.video))
                batch.append(record)
            except (FileNotFoundError, video.CorruptVideoError) as exc:
                report.skipped.append((record.id, str(exc)))
        bar.update(len(todo[first:first + ev.batch_size]) - len(batch))
        if not batch:
            continue
        inputs = processor(text=[text] * len(batch), return_tensors="pt", padding=True,
                           **modeling.video_inputs(clips)).to(model.device)
        start = time.perf_counter()
        with torch.no_grad():
            output = model.generate(**inputs, **kwargs)
        seconds = time.perf_counter() - start
        new = output[:, inputs["input_ids"].shape[1]:]
        pad = processor.tokenizer.pad_token_id
        rows = []
        for record, ids in zip(batch, new):
            count = int((ids != pad).sum())
            rows.append(_prediction_row(record, prompt_kind, processor.decode(ids, skip_special_tokens=True), count,
                                        seconds / len(batch), str(model_dir)))
            report.new_tokens += count
        _append_rows(out_file, rows)
        report.written += len(rows)
        report.seconds += seconds
        bar.update(len(batch))
    bar.close()
    return report


def _append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)
