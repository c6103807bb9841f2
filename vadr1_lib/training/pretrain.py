"""Stage 0 for the tiny model: text-only next-token training, before it ever sees a video.

A Hub checkpoint arrives having read a great deal of English; the tiny Qwen2.5-VL built
here starts from random weights. This stage gives it a small version of that reading and
of an instruct model's chat training: the corpus of :mod:`vadr1_lib.data.corpus` (reports
over random facts, at other cameras), each as the reply to the project's own prompt (P2C-CoT
or direct) in the chat template, with the next-token loss on the reply and its end-of-turn
token. The prompt has no video slot: the model learns to answer the instruction, not to
look, so afterwards it writes fluent reports and its verdict is at chance. SFT then teaches
it to read the verdict off the video (``docs/measurements.md``, "A base that has read").

Why the prompt is there: a model that has read the reports as bare text, from position 0,
wrote salad when the same reports had to follow the prompt and the video's tokens.

It runs transformers' own ``Trainer`` (checkpoints, resume, schedule) through the same
:func:`vadr1_lib.training.common.train_and_save` as SFT and GRPO, and is marked finished
with a :class:`~vadr1_lib.stage_marker.StageMarker` whose fingerprint names the tiny
model it starts from, the corpus and the ``pretrain`` settings, so SFT's fingerprint (which
holds the base's identity) follows any change here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import Trainer, TrainingArguments

from vadr1_lib import prompts
from vadr1_lib.config import Profile
from vadr1_lib.data.corpus import Reply
from vadr1_lib.model import modeling
from vadr1_lib.training import common

TURN_CLOSE = "<|im_end|>"  # Qwen's ChatML end of turn: the token that ends a reply


def text_prompt(processor: Any, prompt_kind: str) -> str:
    """The chat up to the assistant's reply, as SFT and inference render it, without the video slot."""
    messages = prompts.build_messages(prompt_kind)
    for message in messages:
        message["content"] = [item for item in message["content"] if item["type"] != "video"]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class ReplyCollator:
    """Rows ``{"prompt_kind", "text"}`` -> a right-padded batch of chats, the replies (and their
    end-of-turn token) the labels."""

    def __init__(self, processor: Any) -> None:
        self.tokenizer = processor.tokenizer
        self.prompt_ids = {kind: self.tokenizer(text_prompt(processor, kind), add_special_tokens=False)["input_ids"]
                           for kind in prompts.PROMPT_KINDS}
        self.tokenized = common.BoundedCache(self._tokenize, lambda pair: pair[0].nbytes)

    def _tokenize(self, key: tuple[str, str]) -> tuple[torch.Tensor, int]:
        kind, text = key
        prompt = self.prompt_ids[kind]
        reply = self.tokenizer(text + TURN_CLOSE, add_special_tokens=False)["input_ids"]
        return torch.tensor(prompt + reply), len(prompt)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [self.tokenized((row["prompt_kind"], row["text"])) for row in rows]
        length = max(len(ids) for ids, _ in sequences)
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id)
        labels = torch.full((len(rows), length), -100)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for row, (ids, prompt_length) in enumerate(sequences):
            input_ids[row, :len(ids)] = ids
            labels[row, prompt_length:len(ids)] = ids[prompt_length:]
            attention[row, :len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class PretrainTrainer(common.StopsOnDivergence, common.RestoresCheckpointWeights, Trainer):
    """transformers' ``Trainer``, stopping at a NaN and resuming as SFT and GRPO do (the mixins)."""


def stage_dir(profile: Profile) -> Path:
    return profile.base_model_dir


def corpus_sha256(texts: list[Reply]) -> str:
    return hashlib.sha256("\n\x00".join(f"{t.prompt_kind}\x00{t.text}" for t in texts).encode()).hexdigest()


def fingerprint(profile: Profile, init_model: str | Path, texts: list[Reply]) -> str:
    """What a pretrained base depends on: the tiny model it starts from, the corpus, the settings."""
    blob = json.dumps({"init": modeling.model_identity(init_model), "corpus": corpus_sha256(texts),
                       "pretrain": asdict(profile.pretrain), "precision": profile.train.mixed_precision},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_arguments(profile: Profile, output_dir: Path) -> TrainingArguments:
    """The trainer settings from the ``pretrain`` section, in shuffled order.

    Why not batches of similar length, which would spare padding: they are batches of one
    kind of reply (normal answers are the short ones), and a base pretrained on them wrote
    only Normal answers and took SFT to 0.875 format-valid on val where the shuffled one
    reached 0.967 (``docs/measurements.md``)."""
    settings = profile.pretrain
    return TrainingArguments(**common.trainer_arguments(profile, output_dir, settings),
                             warmup_steps=settings.warmup_ratio)  # a float in [0, 1): a share of the steps


@dataclass
class PretrainResult:
    output_dir: Path
    train_seconds: float
    global_step: int
    log_history: list[dict[str, Any]]
    resumed_from: str | None
    corpus_texts: int
    reply_tokens: int

    def record(self, profile: Profile, init_model: str | Path, fingerprint_value: str) -> dict[str, Any]:
        """What the stage marker keeps: the settings' identity, the corpus's size, timing, the loss log."""
        return {"stage": "pretrain", "profile": profile.name, "mode": "full", "init_model": str(init_model),
                "fingerprint": fingerprint_value, "corpus": profile.pretrain.corpus,
                "corpus_texts": self.corpus_texts, "reply_tokens": self.reply_tokens,
                "train_seconds": self.train_seconds, "global_step": self.global_step,
                "resumed_from": self.resumed_from, "log_history": self.log_history}


def loss_curve(record: dict[str, Any]) -> tuple[list[int], list[float]]:
    """(steps, losses) as logged during pretraining, from its stage record."""
    logged = [entry for entry in record["log_history"] if "loss" in entry]
    return [entry["step"] for entry in logged], [entry["loss"] for entry in logged]


def train(profile: Profile, init_model: str | Path, texts: list[Reply], *, output_dir: Path | None = None
          ) -> PretrainResult:
    """Pretrain the tiny model in ``init_model`` on ``texts`` and save it, with its processor and
    its tiny-model marker (sizes, vocabulary), to ``output_dir``. Resumes from the newest
    checkpoint in ``<output_dir>/checkpoints``."""
    output_dir = Path(output_dir or stage_dir(profile))
    checkpoints = output_dir / "checkpoints"
    model, processor = modeling.load_model_and_processor(init_model, profile)
    collator = ReplyCollator(processor)
    rows = datasets.Dataset.from_list([{"prompt_kind": t.prompt_kind, "text": t.text} for t in texts])
    trainer = PretrainTrainer(model=model, args=training_arguments(profile, checkpoints), train_dataset=rows,
                              data_collator=collator)
    seconds, resume = common.train_and_save(trainer, processor, output_dir, checkpoints)
    shutil.copy2(Path(init_model) / modeling.TINY_MARKER_FILE, output_dir / modeling.TINY_MARKER_FILE)
    ids = [collator.tokenized((t.prompt_kind, t.text)) for t in texts]
    return PretrainResult(output_dir, seconds, trainer.state.global_step, trainer.state.log_history, resume,
                          len(texts), sum(len(tokens) - prompt_length for tokens, prompt_length in ids))
