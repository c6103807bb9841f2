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
from vadr1_lib.data import dataset
from vadr1_lib.model import modeling
from vadr1_lib.stage_marker import StageMarker


@dataclass(frozen=True)
class Splits:
    """The three release-format files of a profile's dataset and where their videos are."""

    sft_train: Path
    rl: Path
    test: Path
    video_root: Path | None  # None: paths resolve against each file's folder


def data_splits(profile: Profile) -> Splits:
    """Vad-Reasoning-Mini (built when missing) or the real release (``data.dataset: release``)."""
    if profile.data.dataset == "mini":
        from vadr1_lib.data import mini

        built = mini.ensure_dataset(profile)
        return Splits(built.sft_train, built.rl, built.test, None)
    if profile.data.dataset == "release":
        folder = Path(profile.data.release_dir) if profile.data.release_dir else paths.release_dir()
        root = Path(profile.data.video_root) if profile.data.video_root else None
        if root is not None and not root.is_absolute():
            root = paths.data_dir() / root  # beside the other data, wherever VADR1_DATA puts it
        return Splits(folder / paths.RELEASE_SFT_FILE, folder / paths.RELEASE_RL_FILE,
                      folder / paths.RELEASE_TEST_FILE, root)
    raise ValueError(f"data.dataset must be 'mini' or 'release', got {profile.data.dataset!r}")


def ensure_base_model(profile: Profile) -> str:
    """The profile's starting checkpoint: a hub id / folder, or the tiny model built here.

    The tiny model's vocabulary is Qwen2.5's BPE restricted to the texts it will read and
    write, so it is built from the profile's training targets (the dataset is built first
    when missing) and the prompts. Test answers stay out so the vocabulary does not peek.
    """
    if profile.model.name_or_path != "tiny":
        return profile.model.name_or_path
    splits = data_splits(profile)
    corpus = [record.target_text for record in dataset.load_sft(splits.sft_train, video_root=splits.video_root)]
    identity = modeling.tiny_model_identity(profile.model, corpus)
    for out in (profile.base_model_dir, _profile_own(profile, profile.base_model_dir)):
        info = modeling.tiny_model_info(out)
        if info is not None and info.get("identity") == identity and (out / "model.safetensors").is_file():
            return str(out)
    print(f"building the tiny Qwen2.5-VL in {profile.base_model_dir} (its vocabulary from {len(corpus)} training "
          "targets and the prompts) ...", flush=True)
    modeling.build_tiny_model(profile, profile.base_model_dir, corpus)
    return str(profile.base_model_dir)


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


def _ensure_stage(profile: Profile, stage: str, label: str, out: Path, fingerprint: str, cli_args: list[str],
                  train: Callable[[], dict[str, Any]], dry_run: bool) -> Path:
    """Shared life cycle of a training stage: reuse a finished result with the same
    fingerprint; otherwise run ``python -m vadr1_lib <stage>`` under ``accelerate launch``
    (multi-process profiles) or train in this process, discarding a stale partial result
    first, and mark the result finished with the record ``train`` returns. ``dry_run``
    prints what would run instead."""
    marker = StageMarker(out)
    if marker.finished_with(fingerprint):
        return out
    own = _profile_own(profile, out)
    if own != out and StageMarker(own).finished_with(fingerprint):
        print(f"{label}: the profile's own result has the same settings; using {own}")
        return own
    command = launch_command(profile, stage, cli_args)
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
                       loaded: tuple | None = None) -> Path:
    """Predictions of one model on the profile's test split, ``runs/<profile>/predictions/<label>-<kind>.jsonl``.

    Resumes an interrupted file; starts over when the model behind ``label`` changed.
    """
    import json

    from vadr1_lib.evaluation import inference

    splits = data_splits(profile)
    out = profile.run_dir / "predictions" / f"{label}-{prompt_kind}.jsonl"
    meta = out.with_suffix(".meta.json")
    identity = {"model": modeling.model_identity(model_path), "model_config": asdict(profile.model), "eval": asdict(profile.eval),
                "video": asdict(profile.video)}
    if meta.is_file() and json.loads(meta.read_text()) != json.loads(json.dumps(identity)):
        out.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(identity, indent=2))
    limit = profile.eval.max_test_videos if profile.eval.max_test_videos > 0 else None
    inference.predict_split(model_path, splits.test, out, profile, prompt_kind=prompt_kind,
                            video_root=splits.video_root, limit=limit, loaded=loaded)
    return out


def test_records(profile: Profile) -> list[dataset.SFTRecord]:
    """The test split's ground truth, cut to ``eval.max_test_videos`` when that is set."""
    splits = data_splits(profile)
    records = dataset.load_sft(splits.test, video_root=splits.video_root)
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
        result = grpo.train(profile, start, splits.rl, use_ava=use_ava, output_dir=out, video_root=splits.video_root)
        return result.record(profile, start, fingerprint)

    return _ensure_stage(profile, "grpo", "AVA-GRPO" if use_ava else "GRPO", out, fingerprint,
                         [] if use_ava else ["--no-ava"], train, dry_run)
