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

Modes (``train.mode``): ``full`` trains every weight; ``lora`` trains adapters on the language
model's projections; ``qlora`` does the same on a 4-bit NF4 base
(:func:`vadr1_lib.model.modeling.load_for_training`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from trl import SFTConfig, SFTTrainer

from vadr1_lib import prompts
from vadr1_lib.config import Profile
from vadr1_lib.data import dataset, video
from vadr1_lib.model import modeling
from vadr1_lib.training import common

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
        self.examples = common.BoundedCache(self._process, lambda example: sum(t.nbytes for t in example.values()))
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


def _verdict_tries(targets: list[list[int]], is_normal: list[bool]) -> dict[bool, dict]:
    """One prefix trie of token ids per verdict (key: is_normal)."""
    tries: dict[bool, dict] = {True: {}, False: {}}
    for ids, normal in zip(targets, is_normal):
        node = tries[normal]
        for token in ids:
            node = node.setdefault(token, {})
    return tries


def verdict_branches(targets: list[list[int]], is_normal: list[bool]) -> list[tuple[int, set[int], set[int]]]:
    """Per tokenized target: the index of the token that first commits it to its verdict
    (the first position where its prefix is no longer the prefix of any target of the other
    verdict; -1 when there is none: no target of the other verdict, or a target that is a
    prefix of one), and the tokens that continue its prefix there into a Normal target and
    into an Abnormal one (a token that continues both is in neither: it decides nothing).
    Two prefix tries, so the cost is linear in the number of tokens."""
    tries = _verdict_tries(targets, is_normal)
    branches = []
    for ids, normal in zip(targets, is_normal):
        own, other, found = tries[normal], tries[not normal], (-1, set(), set())
        if other:
            for position, token in enumerate(ids):
                if token not in other:
                    normal_next, abnormal_next = (set(own), set(other)) if normal else (set(other), set(own))
                    found = (position, normal_next - abnormal_next, abnormal_next - normal_next)
                    break
                own, other = own[token], other[token]
        branches.append(found)
    return branches


def decision_token_indices(targets: list[list[int]], is_normal: list[bool]) -> list[int]:
    """Per tokenized target, the index of its deciding token (see :func:`verdict_branches`)."""
    return [position for position, _, _ in verdict_branches(targets, is_normal)]


def sft_dataset(records: list[dataset.SFTRecord], tokenizer: Any) -> datasets.Dataset:
    """Light rows (paths, target text, deciding-token index); frames are decoded by the collator."""
    missing = dataset.missing_videos(records)
    if missing:
        shown = ", ".join(map(str, missing[:5]))
        raise FileNotFoundError(f"{len(missing)} of {len(records)} training videos are missing, e.g. {shown}")
    targets = [tokenizer(r.target_text, add_special_tokens=False)["input_ids"] for r in records]
    decisions = decision_token_indices(targets, [not r.is_abnormal for r in records])
    return datasets.Dataset.from_list([
        {"id": r.id, "video_path": str(r.path), "target": r.target_text, "decision_token": d,
         "abnormal": r.is_abnormal}
        for r, d in zip(records, decisions)
    ])


class VideoSFTTrainer(common.StopsOnDivergence, common.RestoresCheckpointWeights, SFTTrainer):
    """``SFTTrainer`` with the weighted, mask-free loss and the balanced sampler described in
    the module docstring.

    Everything else (loop, optimizer, schedule, checkpoints, accelerate/DeepSpeed, logging)
    is TRL's; only the loss of a batch and the order of the examples are ours.

    Why not TRL's fused LM head: off Triton devices it scores every position, video and
    prompt included (measured: 22% of a cpu-profile step). The answer tokens sit at the end
    of each right-padded row, so asking the model for the logits of the tail that starts at
    the earliest answer token (``logits_to_keep``) scores little more than the answers,
    through the model's ordinary forward (PEFT and DeepSpeed see nothing unusual). With
    ``assistant_only_loss: false`` the tail is the whole sequence, as in the model's own loss.
    """

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


def stage_dir(profile: Profile) -> Path:
    return profile.run_dir / "sft"


def fingerprint(profile: Profile, base_model: str, train_file: Path) -> str:
    """What an SFT result depends on; a cached result with another fingerprint is not reused."""
    blob = json.dumps({"base": modeling.model_identity(base_model), "train": hashlib.sha256(train_file.read_bytes()).hexdigest(),
                       "model": asdict(profile.model), "video": asdict(profile.video),
                       "train_settings": asdict(profile.train), "sft": asdict(profile.sft)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_arguments(profile: Profile, output_dir: Path) -> SFTConfig:
    s = profile.sft
    return SFTConfig(
        **common.trainer_arguments(profile, output_dir, s),
        warmup_steps=s.warmup_ratio,  # a float in [0, 1) is a fraction of the total steps
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

    def record(self, profile: Profile, base_model: str, fingerprint_value: str) -> dict[str, Any]:
        """What the stage marker keeps: settings identity, timing and the training log."""
        return {"stage": "sft", "profile": profile.name, "mode": profile.train.mode, "base_model": str(base_model),
                "fingerprint": fingerprint_value, "train_seconds": self.train_seconds,
                "global_step": self.global_step, "resumed_from": self.resumed_from, "log_history": self.log_history}


def train(profile: Profile, base_model: str, train_file: Path, *, output_dir: Path | None = None,
          video_root: Path | None = None) -> SFTResult:
    """Fine-tune ``base_model`` on ``train_file`` and save the result (model or adapter) + processor.

    Resumes from the newest checkpoint in ``<output_dir>/checkpoints`` when one exists.
    """
    output_dir = Path(output_dir or stage_dir(profile))
    checkpoints = output_dir / "checkpoints"
    records = dataset.load_sft(train_file, video_root=video_root)
    model, processor = modeling.load_for_training(base_model, profile)
    trainer = VideoSFTTrainer(
        model=model,
        args=training_arguments(profile, checkpoints),
        train_dataset=sft_dataset(records, processor.tokenizer),
        data_collator=VideoSFTCollator(processor, profile),
        processing_class=processor,
        balanced_batches=profile.sft.balanced_batches,
    )
    seconds, resume = common.train_and_save(trainer, processor, output_dir, checkpoints)
    return SFTResult(output_dir, seconds, trainer.state.global_step, trainer.state.log_history, resume)
