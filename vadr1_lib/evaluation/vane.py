"""VANE-style multiple-choice questions over the test split.

The paper also evaluates on VANE, a benchmark of multiple-choice questions about anomaly
clips. VANE itself is not available here; these questions follow its shape on the Mini
(or release) test split: for each clip, *which* category it shows, *what* happened and
*where*, each with four options, the distractors taken from other clips' annotations.

How a model is asked: each option is scored by the model's mean log-probability of
writing it as the answer to the question, given the video (the standard way to ask
multiple-choice questions of a model that was never trained to answer with a letter,
like the tiny one); the highest-scoring option is its choice. Chance is 0.25. A split
too small to offer three other categories or regions fills the options from the taxonomy
and the annotator's region words.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vadr1_lib import parsing, prompts
from vadr1_lib.config import Profile
from vadr1_lib.data import dataset, taxonomy, video
from vadr1_lib.model import modeling
from vadr1_lib.progress import track

OPTIONS = 4
QUESTIONS = {
    "which": "Which kind of event does this video show?",
    "what": "What happens in this video?",
    "where": "Where in the frame does the unusual event happen?",
}
# Frame regions in the annotator's words, used when the test split has too few distinct ones.
REGIONS = ("upper-left area of the frame", "upper-center area of the frame", "upper-right area of the frame",
           "center-left area of the frame", "center of the frame", "center-right area of the frame",
           "lower-left area of the frame", "lower-center area of the frame", "lower-right area of the frame",
           "whole frame")
FALLBACKS = {"which": (*taxonomy.CATEGORIES, taxonomy.NORMAL), "where": REGIONS}


@dataclass(frozen=True)
class Question:
    video_id: str
    path: Path
    kind: str  # which | what | where
    question: str
    options: tuple[str, ...]
    answer: int  # index of the correct option


def _fields(record: dataset.SFTRecord) -> dict[str, str | None]:
    parsed = parsing.parse_completion(record.target_text)
    return {"which": record.category, "what": parsed.what, "where": parsed.where}


def make_questions(records: Sequence[dataset.SFTRecord], *, seed: int = 0) -> list[Question]:
    """Questions with 4 options each; distractors come from other clips (never the clip's own value)."""
    rng = random.Random(seed)
    fields = {r.id: _fields(r) for r in records}
    pools: dict[str, list[str]] = {kind: sorted({f[kind] for f in fields.values() if f[kind]}) for kind in QUESTIONS}
    pools["which"] = sorted(set(pools["which"]) | {taxonomy.NORMAL})
    questions = []
    for record in records:
        video_id = record.id
        for kind, text in QUESTIONS.items():
            truth = fields[video_id][kind]
            if truth is None or (kind == "where" and not record.is_abnormal):
                continue
            pool = [value for value in pools[kind] if value != truth]
            if len(pool) < OPTIONS - 1 and kind in FALLBACKS:  # a small split: fill from the known vocabulary
                pool = sorted(set(pool) | (set(FALLBACKS[kind]) - {truth}))
            if len(pool) < OPTIONS - 1:
                continue
            options = rng.sample(pool, OPTIONS - 1) + [truth]
            rng.shuffle(options)
            questions.append(Question(video_id, record.path, kind, text, tuple(options), options.index(truth)))
    return questions


@torch.no_grad()
def option_scores(model: Any, processor: Any, question: Question, profile: Profile) -> list[float]:
    """Mean log-probability of each option as the assistant's reply (one batched forward pass)."""
    clip = video.inference_clip(question.path, profile.video)
    messages = prompts.build_messages("direct")
    messages[-1]["content"][-1]["text"] = question.question
    texts = [processor.apply_chat_template(messages + [{"role": "assistant", "content": [{"type": "text", "text": o}]}],
                                           tokenize=False) for o in question.options]
    processor.tokenizer.padding_side = "right"
    inputs = processor(text=texts, return_tensors="pt", padding=True,
                       **modeling.video_inputs([clip] * len(texts))).to(model.device)
    locator = modeling.ReplyLocator(processor)
    replies = torch.zeros_like(inputs["input_ids"])
    for row, (ids, length, option) in enumerate(zip(inputs["input_ids"], inputs["attention_mask"].sum(1), question.options)):
        replies[row, :length] = locator.mask(ids[:length], option)  # the option's tokens and its end of turn
    logits = model(**inputs).logits[:, :-1].float()
    targets = inputs["input_ids"][:, 1:]
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = replies[:, 1:].bool()
    return ((logprobs * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()


def ask(model: Any, processor: Any, questions: Sequence[Question], profile: Profile) -> dict[str, Any]:
    """Accuracy overall and per question kind, and each question's choice."""
    model.eval()
    choices = [max(range(OPTIONS), key=scores.__getitem__) for scores in
               (option_scores(model, processor, q, profile) for q in track(questions, "VANE questions", "question"))]
    correct = [c == q.answer for c, q in zip(choices, questions)]
    by_kind = {}
    for kind in QUESTIONS:
        picked = [ok for ok, q in zip(correct, questions) if q.kind == kind]
        if picked:
            by_kind[kind] = sum(picked) / len(picked)
    return {"accuracy": sum(correct) / len(correct) if correct else None, "by_kind": by_kind,
            "questions": len(questions), "choices": choices}
