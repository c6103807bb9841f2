"""Profiles: one typed schema for every scale the project runs at.

A *profile* is a YAML file in ``configs/profiles/`` whose sections mirror the dataclasses
below (``data``, ``video``, ``model``, ``pretrain``, ``train``, ``sft``, ``grpo``, ``eval``,
``launch``). The same schema serves the 2-core CPU run and the 4x A100 run, so a notebook
or CLI command never branches on "which machine am I on": it reads numbers from the profile.

Why dataclasses and not a free-form dict: a typo in a YAML key or a ``--set`` override
(``sft.max_step=3``) must fail loudly and list the valid keys, not be silently ignored
while the run uses a default. Values are type-checked against the field annotations.

Selecting a profile:
- CLI: ``python -m vadr1_lib <command> --profile cpu --set sft.max_steps=3``
- notebooks: the ``parameters`` cell sets ``profile`` and ``overrides``; papermill passes
  ``-p profile qlora-24gb``. The environment variable ``VADR1_PROFILE``, when set, wins over
  a notebook's parameters cell: CI executes the notebooks with nbmake, which cannot pass
  parameters, and sets ``VADR1_PROFILE=ci``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vadr1_lib import paths

PROFILE_ENV_VAR = "VADR1_PROFILE"


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with the 1.2 booleans: only true/false. PyYAML's 1.1 default also reads no, yes,
    on and off as booleans, so ``--set train.mixed_precision=no`` arrived as False."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)


class ProfileError(ValueError):
    """An unknown profile, an unknown key or a value of the wrong type."""


@dataclass
class DataConfig:
    """Which dataset to use and, for Vad-Reasoning-Mini, how big to build it."""

    dataset: str = "mini"  # "mini" (built locally) or "release" (the authors' files + videos)
    release_dir: str | None = None  # folder of the release JSONL files (default: paths.release_dir())
    video_root: str | None = None  # local root the release's absolute paths are remapped onto (relative: to VADR1_DATA)
    footage: str | None = None  # folder of the user's own normal footage (default: OpenCV's vtest.avi)
    n_sft_train: int = 200
    n_rl: int = 100
    # Mini's validation split: clips drawn like the test split's (the held-out part of the
    # footage) but other clips. Settings are chosen on it; the test split is scored once.
    n_val: int = 0
    n_test: int = 60
    clip_frames: int = 32  # frames per generated clip
    clip_fps: float = 4.0  # frame rate of the generated clips
    frame_width: int = 112  # generated clips are stored at this size
    frame_height: int = 112
    seed: int = 0


@dataclass
class VideoConfig:
    """How frames reach the model (``docs/fidelity.md``, "Video input" and "Inference")."""

    train_fps: float = 2.0  # training: about 2 frames per second ...
    min_frames: int = 4  # ... at least this many ...
    max_frames: int = 16  # ... at most this many
    infer_frames: int = 16  # inference: this many frames uniformly over the clip
    max_pixels: int = 128 * 28 * 28  # pixel cap per frame (sides are multiples of 28)
    min_pixels: int = 4 * 28 * 28


@dataclass
class TinyModelConfig:
    """Sizes of the locally built Qwen2.5-VL (ignored when loading a hub checkpoint)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_hidden_size: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    vision_intermediate_size: int = 128
    tokens_per_second: int = 4  # temporal position ids per second of video
    corpus_extra_texts: int = 0  # unused texts beyond the prompts and targets (vocabulary)
    # "restricted": Qwen2.5's BPE cut down to the corpus (fast on a CPU); "full": all of it,
    # with the Hub checkpoints' 151,936 embedding rows and real token ids (what preflight uses).
    vocabulary: str = "restricted"
    tie_word_embeddings: bool = True  # the 3B ties its LM head to the embedding, the 7B does not


@dataclass
class ModelConfig:
    name_or_path: str = "tiny"  # "tiny" builds the local model; otherwise a hub id or a folder
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"
    seed: int = 0


@dataclass
class PretrainConfig:
    """Text-only next-token training of the tiny model before SFT (``vadr1_lib.training.pretrain``):
    the stand-in for the reading a Hub model has done. Hub models skip it."""

    corpus_texts: int = 0  # texts in the corpus (vadr1_lib.data.corpus); 0: no pretraining
    corpus: str = "template"  # template: whole P2C-CoT targets; language: the same words without tags
    learning_rate: float = 3e-3
    num_train_epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 5.0
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.08
    weight_decay: float = 0.01
    logging_steps: int = 5
    save_steps: int = 100
    seed: int = 0


@dataclass
class TrainConfig:
    """What SFT and GRPO both read: which weights train, in which precision, with what memory.

    One section, so that GRPO (which continues the SFT result, in the same mode) and SFT
    cannot disagree, and neither stage reads the other's settings.
    """

    mode: str = "full"  # full | lora | qlora (vadr1_lib.model.modeling.load_for_training)
    mixed_precision: str = "no"  # no | bf16 | fp16
    gradient_checkpointing: bool = True
    train_vision_encoder: bool = True  # full mode: False freezes all of it but the merger
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05


@dataclass
class SFTConfig:
    """Supervised fine-tuning (``docs/fidelity.md``, "SFT")."""

    learning_rate: float = 1e-6
    num_train_epochs: float = 4.0
    max_steps: int = -1  # > 0 overrides epochs
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 2
    max_grad_norm: float = 5.0
    lr_scheduler_type: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    assistant_only_loss: bool = True  # the release also trained on prompt tokens (False)
    decision_weight: float = 1.0  # loss weight of the token that commits to the verdict (vadr1_lib.training.sft)
    balanced_batches: bool = False  # every batch half Normal, half Abnormal (vadr1_lib.training.sft.ClassBalancedSampler)
    logging_steps: int = 1
    save_steps: int = 500
    seed: int = 42


@dataclass
class GRPOConfig:
    """(AVA-)GRPO reinforcement learning (``docs/fidelity.md``, "GRPO" and "Rewards")."""

    num_generations: int = 4  # G completions per video
    beta: float = 0.04  # KL coefficient
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.01
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4  # completions per device per step (TRL counts completions)
    gradient_accumulation_steps: int = 1
    max_completion_length: int = 768
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 0  # 0: no top-k (TRL's default); the release sampled with generate's default, 50
    max_grad_norm: float = 1.0  # the trainer's default; the release clipped at 5
    # Weights of accuracy, format, length and (with AVA) the AVA reward; None: 1 each, as the release.
    reward_weights: list[float] | None = None
    balanced_batches: bool = False  # every step holds both verdicts (vadr1_lib.training.grpo.alternate_verdicts)
    use_ava: bool = True
    ava_abnormal_bonus: float = 0.5
    ava_normal_penalty: float = -0.2
    ava_trim_fraction: float = 0.3
    # Who gets the verification bonus: "paper" (any Abnormal answer whose cut leaves a Normal
    # answer) or "label" (only where the RL set's weak label is Abnormal: no false alarm is paid).
    ava_rule: str = "paper"
    # Where a re-query's verdict is read: "which" (its <which>) or "deciding-token" (the first
    # words that commit to a verdict, learnt from the SFT targets; for templates like Mini's).
    ava_verdict: str = "which"
    length_bonus: float = 0.2
    length_range_normal: list[int] = field(default_factory=lambda: [140, 261])
    length_range_abnormal: list[int] = field(default_factory=lambda: [233, 456])
    logging_steps: int = 1
    save_steps: int = 500
    seed: int = 42


@dataclass
class EvalConfig:
    batch_size: int = 8
    max_new_tokens: int = 1024
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    bootstrap_resamples: int = 1000
    max_test_videos: int = -1  # > 0 evaluates only the first N test videos


@dataclass
class LaunchConfig:
    num_processes: int = 1  # > 1: stages are launched with `accelerate launch`
    accelerate_config_sft: str | None = None  # relative to configs/accelerate/
    accelerate_config_grpo: str | None = None
    torch_threads: int = 0  # 0: leave torch's default; CPU profiles set it deliberately
    device: str = "auto"  # auto | cpu | cuda
    # Memory of one device in GiB, the budget plan-memory checks the stages against (None:
    # no verdict; CPU profiles plan host RAM).
    gpu_memory_gib: float | None = None
    # Where training logs go, as transformers' report_to names them ("tensorboard", "wandb",
    # ...); empty: nowhere. Logs land in <stage folder>/logs beside its checkpoints.
    report_to: list[str] = field(default_factory=list)


@dataclass
class Profile:
    name: str
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    # The ``--set`` overrides this profile was loaded with (filled by load_profile, not by
    # YAML), so that a stage relaunched under ``accelerate launch`` gets the same profile.
    overrides: tuple[str, ...] = ()
    # A named variant (an exercise, an ablation) keeps its stages under
    # ``runs/<profile>/variants/<variant>/`` so that trying a setting never replaces the
    # profile's own checkpoints (filled by load_profile, like ``overrides``).
    variant: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        """``runs/<profile>/`` (a variant: ``runs/<profile>/variants/<variant>/``): checkpoints,
        predictions, metrics and executed notebooks."""
        root = paths.runs_dir() / self.name
        return root / "variants" / self.variant if self.variant else root

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / "metrics"

    @property
    def tiny_init_dir(self) -> Path:
        """``runs/<profile>/tiny-init/``: the tiny model as built, random weights (``model.name_or_path: tiny``)."""
        return self.run_dir / "tiny-init"

    @property
    def base_model_dir(self) -> Path:
        """``runs/<profile>/base-model/``: the tiny model after its text pretraining, the start of SFT."""
        return self.run_dir / "base-model"


def profiles_dir() -> Path:
    return paths.CONFIGS_DIR / "profiles"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def resolve_profile_name(name: str) -> str:
    """The profile a notebook should use: ``VADR1_PROFILE`` if set, else ``name``."""
    return os.environ.get(PROFILE_ENV_VAR) or name


RESERVED_FIELDS = ("name", "overrides", "variant")  # set by load_profile, never by YAML or --set
VARIANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def load_profile(name: str, overrides: dict[str, Any] | list[str] | None = None, variant: str = "") -> Profile:
    """Load ``configs/profiles/<name>.yaml`` and apply overrides.

    ``overrides`` is either ``{"sft.max_steps": 3}`` or ``["sft.max_steps=3"]`` (the CLI's
    ``--set`` form, values parsed as YAML scalars). A ``variant`` name gives the result its
    own run folder (see :attr:`Profile.run_dir`).
    """
    if variant and not VARIANT_PATTERN.fullmatch(variant):
        raise ProfileError(f"variant {variant!r}: use letters, digits, '_', '-' or '.' (it names a folder)")
    path = profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(f"unknown profile {name!r}; valid profiles: {', '.join(available_profiles())}")
    raw = _load_yaml(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping at the top level")
    for reserved in RESERVED_FIELDS:
        if reserved in raw:
            raise ProfileError(f"{path}: {reserved!r} is set by load_profile, not in the YAML file")
    profile = _build(Profile, {"name": name, **raw}, where=f"profile {name!r}")
    parsed = parse_overrides(overrides)
    for key, value in parsed.items():
        set_field(profile, key, value)
    profile.overrides = tuple(f"{key}={json.dumps(value)}" for key, value in parsed.items())
    profile.variant = variant
    return profile


def parse_overrides(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ProfileError(f"override {item!r} is not of the form section.key=value")
        parsed[key.strip()] = _load_yaml(text) if text.strip() else None
    return parsed


def set_field(profile: Profile, dotted_key: str, value: Any) -> None:
    """Set ``section.key`` (or ``section.sub.key``) on a profile, checking key and type."""
    parts = dotted_key.split(".")
    target: Any = profile
    for depth, part in enumerate(parts):
        valid = {f.name: f for f in dataclasses.fields(target)}
        if part not in valid or part in RESERVED_FIELDS:
            prefix = ".".join(parts[:depth])
            names = sorted(n for n in valid if n not in RESERVED_FIELDS)
            shown = [f"{prefix}.{n}" if prefix else n for n in names]
            raise ProfileError(f"unknown key {dotted_key!r}; valid keys here: {', '.join(shown)}")
        if depth == len(parts) - 1:
            hint = typing.get_type_hints(type(target))[part]
            if dataclasses.is_dataclass(hint):
                raise ProfileError(f"{dotted_key!r} is a section; set one of its keys instead")
            setattr(target, part, _coerce(value, hint, dotted_key))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ProfileError(f"{'.'.join(parts[: depth + 1])!r} is not a section")


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    kwargs = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ProfileError(f"{where}: section {key!r} must be a mapping")
            kwargs[key] = _build(hint, value, where=f"{where}, section {key!r}")
        else:
            kwargs[key] = _coerce(value, hint, f"{where}: {key}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field annotation; ints are accepted where floats are."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ProfileError as exc:
                errors.append(str(exc))
        raise ProfileError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ProfileError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_hint, where) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-6" as a string
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ProfileError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


COMPARE_KEYS = (
    "model.name_or_path", "model.tiny.hidden_size", "model.dtype", "pretrain.corpus_texts", "data.dataset",
    "data.n_sft_train",
    "video.max_frames", "video.max_pixels", "train.mode", "sft.learning_rate", "sft.max_steps", "sft.num_train_epochs",
    "grpo.num_generations", "grpo.beta", "grpo.max_completion_length", "launch.num_processes", "launch.device",
)


def get_field(profile: Profile, dotted_key: str) -> Any:
    value: Any = profile
    for part in dotted_key.split("."):
        value = getattr(value, part)
    return value


NOT_APPLICABLE = "—"


def applies(profile: Profile, dotted_key: str) -> bool:
    """Whether a field takes effect in this profile: the tiny model's sizes only when the
    model is the tiny one, Mini's sizes only on Mini, a stage's epochs only when no step
    count overrides them (a 7B profile does not train on Mini's 200 videos)."""
    section, _, name = dotted_key.partition(".")
    if dotted_key.startswith(("model.tiny.", "pretrain.")):
        return profile.model.name_or_path == "tiny"
    if section == "data" and name not in ("dataset", "seed"):
        mini_only = name.startswith(("n_", "clip_", "frame_", "footage"))
        return (profile.data.dataset == "mini") == mini_only
    if section in ("pretrain", "sft", "grpo") and name in ("max_steps", "num_train_epochs"):
        steps = getattr(profile, section).max_steps
        return steps > 0 if name == "max_steps" else steps <= 0
    return True


def compare_profiles(names: list[str] | None = None, keys: tuple[str, ...] = COMPARE_KEYS) -> dict[str, dict[str, Any]]:
    """``{key: {profile: value}}`` for a side-by-side table of the profiles, with
    :data:`NOT_APPLICABLE` where a field has no effect in that profile (:func:`applies`)."""
    profiles = [load_profile(n) for n in (names or available_profiles())]
    return {key: {p.name: get_field(p, key) if applies(p, key) else NOT_APPLICABLE for p in profiles} for key in keys}
