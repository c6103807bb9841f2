"""The pipeline's stages, each built once and reused: dataset -> base model -> SFT -> GRPO.

Every notebook must also run on its own, so a notebook that needs an earlier stage's
output calls ``ensure_*`` here: it returns the cached result when it exists and builds it
(through the same library code the earlier notebook uses) when it does not. The ordered
``make run`` therefore pays for each stage once. A cached result carries a fingerprint of
the settings it was made with; other settings rebuild it instead of silently reusing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vadr1_lib import paths
from vadr1_lib.cluster import launch
from vadr1_lib.config import Profile
from vadr1_lib.data import corpus, dataset
from vadr1_lib.model import modeling
from vadr1_lib.stage_marker import StageMarker


@dataclass(frozen=True)
class Splits:
    """The release-format files of a profile's dataset and where their videos are."""

    sft_train: Path
    rl: Path
    val: Path | None  # None: the dataset has no validation split (the release)
    test: Path
    video_root: Path | None  # None: paths resolve against each file's folder

    def file(self, split: str) -> Path:
        """The file of ``split`` ("sft_train", "rl", "val" or "test")."""
        path = getattr(self, split, None) if split in ("sft_train", "rl", "val", "test") else None
        if path is None:
            raise ValueError(f"this dataset has no {split!r} split")
        return path


def data_splits(profile: Profile) -> Splits:
    """Vad-Reasoning-Mini (built when missing) or the real release (``data.dataset: release``)."""
    if profile.data.dataset == "mini":
        from vadr1_lib.data import mini

        built = mini.ensure_dataset(profile)
        return Splits(built.sft_train, built.rl, built.val, built.test, None)
    if profile.data.dataset == "release":
        folder = Path(profile.data.release_dir) if profile.data.release_dir else paths.release_dir()
        root = Path(profile.data.video_root) if profile.data.video_root else None
        if root is not None and not root.is_absolute():
            root = paths.data_dir() / root  # beside the other data, wherever VADR1_DATA puts it
        return Splits(folder / paths.RELEASE_SFT_FILE, folder / paths.RELEASE_RL_FILE, None,
                      folder / paths.RELEASE_TEST_FILE, root)
    raise ValueError(f"data.dataset must be 'mini' or 'release', got {profile.data.dataset!r}")


def pretraining_corpus(profile: Profile) -> list[corpus.Reply]:
    """The tiny model's pretraining texts (:mod:`vadr1_lib.data.corpus`), none of them the text
    written for a clip of the profile's dataset, nor an abnormal clip's answer (any split: a
    test answer is never read before the test)."""
    if profile.pretrain.corpus_texts <= 0:
        return []
    splits = data_splits(profile)
    records = [record for split in (splits.sft_train, splits.val, splits.test) if split is not None and split.is_file()
               for record in dataset.load_sft(split, video_root=splits.video_root)]
    written = [record.target_text for record in records] + [record.answer for record in records if record.is_abnormal]
    return corpus.profile_corpus(profile, written)


def ensure_tiny_init(profile: Profile) -> str:
    """The tiny model as built, random weights, in ``runs/<profile>/tiny-init/`` (reused when
    its sizes and vocabulary are the same).

    Its vocabulary is Qwen2.5's BPE restricted to the texts it will read and write: the
    profile's training targets (the dataset is built first when missing), the prompts and
    the pretraining corpus. Test answers stay out so the vocabulary does not peek.
    """
    return _tiny_init(profile, pretraining_corpus(profile))


def _tiny_init(profile: Profile, replies: list[corpus.Reply]) -> str:
    splits = data_splits(profile)
    texts = [record.target_text for record in dataset.load_sft(splits.sft_train, video_root=splits.video_root)]
    texts += [reply.text for reply in replies]
    identity = modeling.tiny_model_identity(profile.model, texts)
    for out in (profile.tiny_init_dir, _profile_own(profile, profile.tiny_init_dir)):
        info = modeling.tiny_model_info(out)
        if info is not None and info.get("identity") == identity and (out / "model.safetensors").is_file():
            return str(out)
    print(f"building the tiny Qwen2.5-VL in {profile.tiny_init_dir} (its vocabulary from {len(set(texts))} distinct "
          "texts: the training targets and the pretraining corpus; and the prompts) ...", flush=True)
    modeling.build_tiny_model(profile, profile.tiny_init_dir, texts)
    return str(profile.tiny_init_dir)


def ensure_base_model(profile: Profile) -> str:
    """The profile's starting checkpoint: a Hub id / folder, or the tiny model built and
    pretrained here (``runs/<profile>/base-model/``; the random one when ``pretrain.corpus_texts``
    is 0)."""
    if profile.model.name_or_path != "tiny":
        return profile.model.name_or_path
    from vadr1_lib.training import pretrain

    texts = pretraining_corpus(profile)  # built once: it makes the vocabulary and is what the stage reads
    init = _tiny_init(profile, texts)
    if not texts:
        return init
    out = pretrain.stage_dir(profile)
    fingerprint = pretrain.fingerprint(profile, init, texts)

    def train() -> dict[str, Any]:
        print(f"pretraining the tiny model on {len(texts)} texts ({profile.pretrain.corpus} corpus) ...", flush=True)
        return pretrain.train(profile, init, texts, output_dir=out).record(profile, init, fingerprint)

    return str(_ensure_stage(profile, None, "pretraining", out, fingerprint, [], train, dry_run=False))


def _profile_own(profile: Profile, folder: Path) -> Path:
    """Where ``folder`` of a variant lies in the profile's own run folder (itself without a
    variant). A variant's stage whose settings equal the profile's own is reused from there:
    an exercise that changes GRPO retrains GRPO, not SFT and the base model too."""
    return paths.runs_dir() / profile.name / folder.relative_to(profile.run_dir) if profile.variant else folder


def launch_command(profile: Profile, stage: str, cli_args: list[str] | None = None) -> list[str] | None:
    """The exact command that runs ``stage`` ("sft", or "grpo" with ``cli_args`` such as
    ``["--no-ava"]``) for a multi-process profile: this profile and its overrides, under
    ``accelerate launch``. None when the profile trains in this process."""
    if not launch.needs_launcher(profile):
        return None
    variant = [f"--variant={profile.variant}"] if profile.variant else []
    return launch.accelerate_command(profile, stage, ["--profile", profile.name, *variant, *(cli_args or []),
                                                      *[f"--set={o}" for o in profile.overrides]])


def _ensure_stage(profile: Profile, stage: str | None, label: str, out: Path, fingerprint: str, cli_args: list[str],
                  train: Callable[[], dict[str, Any]], dry_run: bool) -> Path:
    """Shared life cycle of a training stage: reuse a finished result with the same
    fingerprint; otherwise run ``python -m vadr1_lib <stage>`` under ``accelerate launch``
    (multi-process profiles; ``stage`` None: always in this process) or train in this
    process, discarding a stale partial result first, and mark the result finished with the
    record ``train`` returns. ``dry_run`` prints what would run instead."""
    marker = StageMarker(out)
    if marker.finished_with(fingerprint):
        return out
    own = _profile_own(profile, out)
    if own != out and StageMarker(own).finished_with(fingerprint):
        print(f"{label}: the profile's own result has the same settings; using {own}")
        return own
    command = launch_command(profile, stage, cli_args) if stage is not None else None
    if command is not None:
        if dry_run:
            print(launch.format_command(command))
        elif (code := launch.run(command)) != 0:
            raise launch.LaunchFailed(f"{stage} under accelerate failed (exit status {code}): "
                                      f"{launch.format_command(command)}")
        return out
    if dry_run:
        print(f"would train {label} in this process into {out}")
        return out
    marker.begin(fingerprint)
    record = train()
    if launch.is_main_process():
        if modeling.is_adapter(out):  # so that a moved run folder finds its base (modeling.adapter_base)
            record["adapter_base"] = modeling.adapter_base_record(out)
        marker.finish(record)
    return out


def ensure_sft(profile: Profile, *, dry_run: bool = False) -> Path:
    """The SFT result of the profile under ``runs/<profile>/sft/`` (trained, or resumed, when missing).

    Multi-process profiles run the ``sft`` command under ``accelerate launch``; with
    ``dry_run`` that command is printed instead of run.
    """
    from vadr1_lib.training import sft

    base = ensure_base_model(profile)
    splits = data_splits(profile)
    out = sft.stage_dir(profile)
    fingerprint = sft.fingerprint(profile, base, splits.sft_train)

    def train() -> dict[str, Any]:
        result = sft.train(profile, base, splits.sft_train, output_dir=out, video_root=splits.video_root)
        return result.record(profile, base, fingerprint)

    return _ensure_stage(profile, "sft", "SFT", out, fingerprint, [], train, dry_run)


def ensure_predictions(profile: Profile, label: str, model_path: str, *, prompt_kind: str = "p2c",
                       loaded: tuple | None = None, split: str = "test") -> Path:
    """Predictions of one model on the profile's test split (or ``split="val"``),
    ``runs/<profile>/predictions/<label>-<kind>.jsonl`` (``<label>-<kind>-val.jsonl``).

    Resumes an interrupted file; starts over when the model behind ``label`` changed.
    """
    import json

    from vadr1_lib.evaluation import inference

    splits = data_splits(profile)
    suffix = "" if split == "test" else f"-{split}"
    out = profile.run_dir / "predictions" / f"{label}-{prompt_kind}{suffix}.jsonl"
    meta = out.with_suffix(".meta.json")
    identity = {"model": modeling.model_identity(model_path), "model_config": asdict(profile.model), "eval": asdict(profile.eval),
                "video": asdict(profile.video)}
    if meta.is_file() and json.loads(meta.read_text()) != json.loads(json.dumps(identity)):
        out.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(identity, indent=2))
    limit = profile.eval.max_test_videos if profile.eval.max_test_videos > 0 else None
    inference.predict_split(model_path, splits.file(split), out, profile, prompt_kind=prompt_kind,
                            video_root=splits.video_root, limit=limit, loaded=loaded)
    return out


def test_records(profile: Profile, split: str = "test") -> list[dataset.SFTRecord]:
    """The test split's (or ``split``'s) ground truth, cut to ``eval.max_test_videos`` when that is set."""
    splits = data_splits(profile)
    records = dataset.load_sft(splits.file(split), video_root=splits.video_root)
    return records[: profile.eval.max_test_videos] if profile.eval.max_test_videos > 0 else records


def ensure_grpo(profile: Profile, *, use_ava: bool, dry_run: bool = False) -> Path:
    """The (AVA-)GRPO result of the profile under ``runs/<profile>/ava-grpo/`` (``grpo/`` without
    AVA), trained from the profile's SFT result (itself built when missing).

    Multi-process profiles run the ``grpo`` command under ``accelerate launch`` (ZeRO-3
    config); with ``dry_run`` that command is printed instead of run.
    """
    from vadr1_lib.training import grpo

    start = ensure_sft(profile, dry_run=dry_run)
    splits = data_splits(profile)
    out = grpo.stage_dir(profile, use_ava=use_ava)
    fingerprint = grpo.fingerprint(profile, start, splits.rl, use_ava=use_ava)

    def train() -> dict[str, Any]:
        result = grpo.train(profile, start, splits.rl, use_ava=use_ava, output_dir=out, video_root=splits.video_root,
                            sft_file=splits.sft_train)
        return result.record(profile, start, fingerprint)

    return _ensure_stage(profile, "grpo", "AVA-GRPO" if use_ava else "GRPO", out, fingerprint,
                         [] if use_ava else ["--no-ava"], train, dry_run)
