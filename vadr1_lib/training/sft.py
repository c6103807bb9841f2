"""Supervised fine-tuning with TRL's ``SFTTrainer``: video in, P2C-CoT out.

Each training example is a chat: the system prompt, a user turn holding the video and the
P2C-CoT instruction (:mod:`vadr1_lib.prompts`), and the assistant's target, think + newline
+ answer, exactly the release's training text.

Why a collator of our own (passed to ``SFTTrainer``, which still runs the loop, the
optimizer, checkpoints, logging and accelerate/DeepSpeed): TRL's vision collator hands
decoded frames to the processor without their frame rate, so every clip would be assumed
to play at 24 fps and Qwen2.5-VL's temporal positions would collapse onto one value. Ours
decodes the frames the release's way (about 2 fps, 4 to 16 frames), passes the real
sampling rate, and builds the labels:

- loss on the assistant's tokens only (``sft.assistant_only_loss: true``, the default):
  the reply and its end-of-turn token, located from the rendered template
  (:class:`vadr1_lib.model.modeling.ReplyLocator`), so any Qwen2.5-VL checkpoint's template works;
- or on every text token (``false``), as the release did: the model then also learns to
  predict the system prompt and the instruction, which costs capacity on text it is always
  given. Vision placeholder tokens never carry loss (they are inputs, not predictions).

Deciding-token weight (``sft.decision_weight``, 1 = the paper's plain token mean): in a
P2C-CoT target the verdict is written once, at the first token where a Normal target and
an Abnormal one part ways (with the Mini annotations, the first word of step 2); every
later token follows from the text before it. So of ~240 target tokens exactly one needs
the video to be predicted, and a small model learns the wording long before it learns to
look. Weighting that token (measured on the cpu profile: see ``configs/profiles/cpu.yaml``)
makes the one video-dependent decision count; the 7B profiles keep 1.

Class-balanced batches (``sft.balanced_batches``, off = the paper's shuffled order): with
the plain shuffle, a batch of 8 holds anywhere from 1 to 7 clips of one verdict, and the
deciding token's gradient follows that mix, pushing the verdict's prior back and forth
rather than towards the video. Drawing every batch half and half cancels the prior in each
step, so what is left of the gradient is what the video says (measured on the cpu profile:
see ``configs/profiles/cpu.yaml``).

Speed: batches are right-padded and attention is causal, so no real token can attend to a
pad; the forward therefore runs without the padding mask, which lets PyTorch's attention
take its causal kernel (about 15% of a step on the CPU). Labels still ignore the pads.

Modes (``sft.mode``): ``full`` trains every weight; ``lora`` trains adapters on the language
model's projections; ``qlora`` does the same on a 4-bit NF4 base
(:func:`vadr1_lib.model.modeling.load_for_training`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import torch

from vadr1_lib import prompts
from vadr1_lib.config import Profile
from vadr1_lib.data import dataset, video
from vadr1_lib.model import modeling

CACHE_BYTES = 1 << 30  # decoded clips / processed examples kept in memory across epochs


class BoundedCache:
    """``load(key)`` results kept while their ``nbytes`` fit in a byte budget (oldest dropped first).

    Decoding and processing give the same result every epoch, so small datasets pay for
    them once; a real-scale dataset simply streams.
    """

    def __init__(self, load: Callable[[Any], Any], nbytes: Callable[[Any], int], max_bytes: int = CACHE_BYTES) -> None:
        self._load = load
        self._nbytes = nbytes
        self._max_bytes = max_bytes
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._bytes = 0

    def __call__(self, key: Any) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._load(key)
        size = self._nbytes(value)
        if size <= self._max_bytes:
            self._items[key] = value
            self._bytes += size
            while self._bytes > self._max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= self._nbytes(dropped)
        return value


PER_TOKEN_PAD_VALUES = {"attention_mask": 0, "mm_token_type_ids": 0, "reply_mask": 0}  # and input_ids: the pad id


class VideoSFTCollator:
    """Rows ``{"video_path", "target", "decision_token"}`` -> a right-padded batch with video
    tensors, labels and per-token loss weights.

    Each row goes through the processor once (chat template, video preprocessing, the
    reply's mask); batches are then padded from the cached, unpadded examples.
    """

    def __init__(self, processor: Any, profile: Profile, *, assistant_only_loss: bool | None = None) -> None:
        self.processor = processor
        self.assistant_only_loss = profile.sft.assistant_only_loss if assistant_only_loss is None else assistant_only_loss
        self.decision_weight = profile.sft.decision_weight
        self.video_config = profile.video
        self.examples = BoundedCache(self._process, lambda example: sum(t.nbytes for t in example.values()))
        self.vision_ids = modeling.vision_token_ids(processor)
        self.reply = modeling.ReplyLocator(processor)
        self.pad_values = dict(PER_TOKEN_PAD_VALUES, input_ids=processor.tokenizer.pad_token_id)

    def _process(self, key: tuple[str, str]) -> dict[str, torch.Tensor]:
        path, target = key
        clip = video.training_clip(path, self.video_config)  # decoded once: the processed example is cached
        inputs = modeling.video_inputs([clip])
        example = dict(self.processor.apply_chat_template(
            [prompts.build_messages("p2c", video=clip.frames, target=target)], tokenize=True, return_dict=True,
            return_tensors="pt",
            processor_kwargs={"add_special_tokens": False, "video_metadata": inputs["video_metadata"],
                              "do_sample_frames": False},
        ))
        example["reply_mask"] = self.reply.mask(example["input_ids"][0], target).unsqueeze(0)
        return example

    def pad(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-pad the per-token tensors, concatenate the video ones (the processor's own batching)."""
        length = max(example["input_ids"].size(1) for example in examples)
        batch = {}
        for key in examples[0]:
            if key in self.pad_values:
                batch[key] = torch.cat([torch.nn.functional.pad(example[key], (0, length - example[key].size(1)),
                                                                value=self.pad_values[key]) for example in examples])
            else:
                batch[key] = torch.cat([example[key] for example in examples])
        return batch

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pad([self.examples((row["video_path"], row["target"])) for row in rows])
        reply = batch.pop("reply_mask")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        labels[torch.isin(labels, self.vision_ids)] = -100
        if self.assistant_only_loss:
            labels[reply == 0] = -100
        weights = (labels != -100).float()
        for index, row in enumerate(rows):
            if row["decision_token"] >= 0:
                weights[index, int(reply[index].nonzero()[0]) + row["decision_token"]] *= self.decision_weight
        batch["labels"] = labels
        batch["loss_weights"] = weights
        return batch


class ClassBalancedSampler(torch.utils.data.Sampler):
    """Training indices in an order where each run of ``batch_size`` consecutive indices
    (one device's batch) holds the two verdicts in equal numbers, alternating; for an odd
    size the extra place goes to each verdict in turn from batch to batch.

    Each verdict is drawn from its own shuffled queue, reshuffled when used up, so the
    smaller class is revisited more often (the real release has more anomalies than normal
    clips). An epoch is ``len(dataset)`` indices. The order depends only on the seed and the
    epoch (the trainer calls ``set_epoch``), which is what resuming mid-epoch needs: the
    trainer replays the epoch's order and skips the batches already trained. Under several
    processes accelerate hands whole batches to each, so every device batch stays balanced.
    """

    def __init__(self, is_abnormal: list[bool], batch_size: int, seed: int) -> None:
        self.groups = [[i for i, abnormal in enumerate(is_abnormal) if abnormal == verdict] for verdict in (True, False)]
        if not all(self.groups):
            raise ValueError("balanced batches need training clips of both verdicts; this split has only one "
                             "(set sft.balanced_batches=false)")
        self.size = len(is_abnormal)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)  # one stream per (seed, epoch)
        queues: list[list[int]] = [[], []]
        for position in range(self.size):
            batch, place = divmod(position, self.batch_size)
            group = (batch + place) % 2  # alternate within a batch; an odd batch's extra place alternates too
            if not queues[group]:
                members = self.groups[group]
                queues[group] = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
            yield queues[group].pop()


def decision_token_indices(targets: list[list[int]], is_normal: list[bool]) -> list[int]:
    """Per tokenized target, the index of the token that first commits it to its verdict:
    the first position where its prefix is no longer the prefix of any target of the other
    verdict. -1 when there is none (no target of the other verdict, or a target that is a
    prefix of one). Two prefix tries, so the cost is linear in the number of tokens."""
    tries: dict[bool, dict] = {True: {}, False: {}}
    for ids, normal in zip(targets, is_normal):
        node = tries[normal]
        for token in ids:
            node = node.setdefault(token, {})
    indices = []
    for ids, normal in zip(targets, is_normal):
        node, found = tries[not normal], -1
        if node:
            for position, token in enumerate(ids):
                if token not in node:
                    found = position
                    break
                node = node[token]
        indices.append(found)
    return indices


def sft_dataset(records: list[dataset.SFTRecord], tokenizer: Any) -> datasets.Dataset:
    """Light rows (paths, target text, deciding-token index); frames are decoded by the collator."""
    missing = dataset.missing_videos(records)
    if missing:
        shown = ", ".join(map(str, missing[:5]))
        raise FileNotFoundError(f"{len(missing)} of {len(records)} training videos are missing, e.g. {shown}")
    targets = [tokenizer(r.target_text, add_special_tokens=False)["input_ids"] for r in records]
    decisions = decision_token_indices(targets, [not r.is_abnormal for r in records])
    return datasets.Dataset.from_list([
        {"id": f"{r.source}/{r.video}", "video_path": str(r.path), "target": r.target_text, "decision_token": d,
         "abnormal": r.is_abnormal}
        for r, d in zip(records, decisions)
    ])


def video_sft_trainer_class() -> type:
    """``SFTTrainer`` with the weighted, mask-free loss and the balanced sampler described in
    the module docstring.

    Built on first use because importing TRL takes seconds and most callers never train.
    Everything else (loop, optimizer, schedule, checkpoints, accelerate/DeepSpeed, logging)
    is TRL's; only the loss of a batch and the order of the examples are ours.

    Why not TRL's fused LM head: off Triton devices it scores every position, video and
    prompt included (measured: 22% of a cpu-profile step). The answer tokens sit at the end
    of each right-padded row, so asking the model for the logits of the tail that starts at
    the earliest answer token (``logits_to_keep``) scores little more than the answers,
    through the model's ordinary forward (PEFT and DeepSpeed see nothing unusual). With
    ``assistant_only_loss: false`` the tail is the whole sequence, as in the model's own loss.
    """
    from trl import SFTTrainer

    class VideoSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, balanced_batches: bool = False, **kwargs: Any) -> None:
            self.balanced_batches = balanced_batches
            super().__init__(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            if not self.balanced_batches:
                return super()._get_train_sampler(train_dataset)
            rows = self.train_dataset if train_dataset is None else train_dataset
            return ClassBalancedSampler(list(rows["abnormal"]), self.args.per_device_train_batch_size, self.args.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            labels, weights = inputs.pop("labels"), inputs.pop("loss_weights")
            attention = inputs["attention_mask"]
            if bool((attention[:, 1:] <= attention[:, :-1]).all()):  # right padding only: pads come last
                inputs.pop("attention_mask")
            targets, weights = labels[:, 1:], weights[:, 1:]  # position p predicts token p + 1
            scored = (targets != -100).any(dim=0).nonzero()
            first = int(scored[0]) if len(scored) else targets.size(1) - 1
            outputs = model(**inputs, use_cache=False, logits_to_keep=labels.size(1) - first)
            log_probs = outputs.logits[:, :-1].float().log_softmax(-1)  # the positions first .. L-2
            targets, weights = targets[:, first:], weights[:, first:]
            mask = targets != -100
            token_log_probs = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = -(token_log_probs * weights.to(token_log_probs.dtype)).sum()
            loss = loss / torch.as_tensor(tokens, device=loss.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as TRL: DDP averages, the count was global
            self._log_token_metrics(model, log_probs.detach(), targets, mask, attention)
            return (loss, outputs) if return_outputs else loss

        def _log_token_metrics(self, model, log_probs, targets, mask, attention) -> None:
            """The figures TRL's SFTTrainer logs: entropy and top-1 accuracy on the target
            tokens, tokens seen."""
            mode = "train" if model.training else "eval"
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            top1 = log_probs.argmax(-1) == targets
            valid = self.accelerator.gather_for_metrics(mask.sum()).sum().clamp(min=1)
            for name, per_token in (("entropy", entropy), ("mean_token_accuracy", top1)):
                total = self.accelerator.gather_for_metrics((per_token.float() * mask).sum()).sum()
                self._metrics[mode][name].append((total / valid).item())
            if mode == "train":
                self._total_train_tokens += self.accelerator.gather_for_metrics(attention.sum()).sum().item()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    return VideoSFTTrainer


def stage_dir(profile: Profile) -> Path:
    return profile.run_dir / "sft"


def fingerprint(profile: Profile, base_model: str, train_file: Path) -> str:
    """What an SFT result depends on; a cached result with another fingerprint is not reused."""
    blob = json.dumps({"base": str(base_model), "train": hashlib.sha256(train_file.read_bytes()).hexdigest(),
                       "model": asdict(profile.model), "video": asdict(profile.video), "sft": asdict(profile.sft)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


MIXED_PRECISIONS = ("no", "bf16", "fp16")


def mixed_precision_flags(profile: Profile) -> dict[str, bool]:
    """``bf16`` / ``fp16`` for the trainer from ``launch.mixed_precision``.

    Passed on as asked, wherever the run is: bf16 autocasts on a CPU too, and a GPU
    without bf16 (a T4) then fails at once with transformers' own message instead of
    silently training in fp32. fp16 takes effect on a GPU only (accelerate enables its
    autocast and gradient scaler there; on a CPU the fp16 weights run without them).
    """
    precision = profile.launch.mixed_precision
    if precision not in MIXED_PRECISIONS:
        raise ValueError(f"launch.mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, got {precision!r}")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def common_trainer_arguments(profile: Profile, output_dir: Path, section: Any) -> dict[str, Any]:
    """Trainer settings SFT and GRPO share: output, precision, device, memory, logging, seeds."""
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=section.per_device_train_batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        learning_rate=section.learning_rate,
        num_train_epochs=section.num_train_epochs,
        max_steps=section.max_steps,
        lr_scheduler_type=section.lr_scheduler_type,
        weight_decay=section.weight_decay,
        gradient_checkpointing=profile.sft.gradient_checkpointing,  # memory settings live in the SFT section
        gradient_checkpointing_kwargs={"use_reentrant": False},
        **mixed_precision_flags(profile),
        logging_steps=section.logging_steps,
        save_steps=section.save_steps,
        save_total_limit=2,
        seed=section.seed,
        data_seed=section.seed,
        report_to=profile.launch.report_to or "none",
        run_name=f"{profile.name}/{Path(output_dir).parent.name}",  # e.g. full-4xa100/ava-grpo
        remove_unused_columns=False,  # the video path column must reach the collator / rewards
        use_cpu=modeling.pick_device(profile).type == "cpu",
        dataloader_num_workers=0,
    )


def training_arguments(profile: Profile, output_dir: Path) -> Any:
    from trl import SFTConfig

    s = profile.sft
    return SFTConfig(
        **common_trainer_arguments(profile, output_dir, s),
        warmup_steps=s.warmup_ratio,  # a float in [0, 1) is a fraction of the total steps
        max_grad_norm=s.max_grad_norm,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
    )


@dataclass
class SFTResult:
    output_dir: Path
    train_seconds: float
    global_step: int
    log_history: list[dict[str, Any]]
    resumed_from: str | None


def train(profile: Profile, base_model: str, train_file: Path, *, output_dir: Path | None = None,
          video_root: Path | None = None) -> SFTResult:
    """Fine-tune ``base_model`` on ``train_file`` and save the result (model or adapter) + processor.

    Resumes from the newest checkpoint in ``<output_dir>/checkpoints`` when one exists.
    """
    output_dir = Path(output_dir or stage_dir(profile))
    checkpoints = output_dir / "checkpoints"
    records = dataset.load_sft(train_file, video_root=video_root)
    model, processor = modeling.load_for_training(base_model, profile)
    trainer = video_sft_trainer_class()(
        model=model,
        args=training_arguments(profile, checkpoints),
        train_dataset=sft_dataset(records, processor.tokenizer),
        data_collator=VideoSFTCollator(processor, profile),
        processing_class=processor,
        balanced_batches=profile.sft.balanced_batches,
    )
    seconds, resume = train_and_save(trainer, processor, output_dir, checkpoints)
    return SFTResult(output_dir, seconds, trainer.state.global_step, trainer.state.log_history, resume)


def train_and_save(trainer: Any, processor: Any, output_dir: Path, checkpoints: Path) -> tuple[float, str | None]:
    """Train (resuming from the newest checkpoint if there is one), then save the model or
    adapter and the processor; returns the training seconds and the checkpoint resumed from."""
    from transformers.trainer_utils import get_last_checkpoint

    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    log_beside_checkpoints(trainer, output_dir / "logs")
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(output_dir))
    return seconds, resume


def log_beside_checkpoints(trainer: Any, logs: Path) -> None:
    """Send the trackers' files to ``<stage>/logs`` (TensorBoard would otherwise write into
    the checkpoint folder, Weights & Biases into the working directory). A resumed run
    appends to the same place, so one TensorBoard view shows a requeued job as one curve."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(logs)
    if "wandb" in trainer.args.report_to:
        os.environ.setdefault("WANDB_DIR", str(logs))


def write_marker(result: SFTResult, profile: Profile, base_model: str, fingerprint_value: str) -> None:
    """Mark the stage finished (``ensure_sft`` reuses it) and keep its training log."""
    marker = {
        "stage": "sft", "profile": profile.name, "mode": profile.sft.mode, "base_model": str(base_model),
        "fingerprint": fingerprint_value, "train_seconds": result.train_seconds, "global_step": result.global_step,
        "resumed_from": result.resumed_from, "log_history": result.log_history,
    }
    (result.output_dir / modeling.STAGE_MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    (result.output_dir / "pending-fingerprint").unlink(missing_ok=True)


def read_marker(output_dir: Path) -> dict[str, Any] | None:
    path = Path(output_dir) / modeling.STAGE_MARKER_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def discard_stale(output_dir: Path, fingerprint_value: str) -> None:
    """Remove a finished or partial result made with other settings (its checkpoints must not be resumed)."""
    marker = read_marker(output_dir)
    stale_marker = marker is not None and marker.get("fingerprint") != fingerprint_value
    pending = output_dir / "pending-fingerprint"
    stale_checkpoints = pending.is_file() and pending.read_text().strip() != fingerprint_value
    if stale_marker or stale_checkpoints:
        print(f"{output_dir} was trained with other settings: starting over")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pending.write_text(fingerprint_value)
