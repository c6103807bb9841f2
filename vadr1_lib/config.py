"""Profiles: one typed schema for every scale the project runs at.

A *profile* is a YAML file in ``configs/profiles/`` whose sections mirror the dataclasses
below (``data``, ``video``, ``model``, ``pretrain``, ``train``, ``sft``, ``grpo``, ``eval``,
``launch``). The same schema serves the 2-core CPU run and the 4x A100 run, so a notebook
or CLI command never branches on "which machine am I on": it reads numbers from the profile.

Why dataclasses and not a free-form dict: a typo in a YAML key or a ``--set`` override
(``sft.max_step=3``) must fail loudly and list the valid keys, not be silently ignored
while the run uses a default. Values are type-checked against the field annotations, and
every numeric field declares its valid range beside it (:class:`Range`; fields that must
agree with each other: :data:`RELATIONS`), so a NaN learning rate or a negative step count
stops with one line instead of training.

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
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

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
    """An unknown profile, an unknown key, a value of the wrong type or out of its range."""


@dataclass(frozen=True)
class Range:
    """The values a numeric profile field accepts (for a list field: each item's), declared
    once, beside the field, as ``Annotated[float, POSITIVE]``.

    Why in the schema: a value that type-checks can still be nonsense that trains without a
    word (``grpo.learning_rate=nan`` trained and saved a NaN model; ``sft.max_steps=-5`` was
    read as "use the epochs"). Every value is checked where it is read, from a YAML file,
    ``--set`` or a notebook's overrides alike, and always has to be finite.
    ``tests/test_config.py`` walks every field and fails for a numeric one without a range.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the bound itself is outside
    high_open: bool = False
    also: tuple[int, ...] = ()  # accepted besides the bounds: -1 for "not set"
    count: int | None = None  # a list field: exactly this many items ...
    ascending: bool = False  # ... each at least the one before
    meaning: str = ""  # what a list's items are, for the message

    def admits(self, value: Any) -> bool:
        if value is None:  # an optional field left unset; its type says whether None is allowed
            return True
        if isinstance(value, list):
            return ((self.count is None or len(value) == self.count) and all(map(self._admits_number, value))
                    and (not self.ascending or all(a <= b for a, b in zip(value, value[1:]))))
        return self._admits_number(value)

    def _admits_number(self, value: float) -> bool:
        if value in self.also:
            return True
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self, integer: bool) -> str:
        """The range in words, e.g. "a finite number > 0", "-1 or an integer >= 1"."""
        noun = "an integer" if integer else "a finite number"
        low, high = (_number_text(bound) if bound is not None else None for bound in (self.low, self.high))
        if low is not None and high is not None:
            text = f"{noun} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        elif low is not None:
            text = f"{noun} {'>' if self.low_open else '>='} {low}"
        elif high is not None:
            text = f"{noun} {'<' if self.high_open else '<='} {high}"
        else:
            text = noun
        text = " or ".join([*map(_number_text, self.also), text])
        if self.count is not None:
            text = f"a list of {self.count}, each {text}"
        if self.ascending:
            text += ", in ascending order"
        return f"{text} ({self.meaning})" if self.meaning else text


@dataclass(frozen=True)
class OneOf:
    """The words a text profile field accepts, declared beside it as
    ``Annotated[str, OneOf(FORMAT_RULES)]`` and checked where the value is read, as a
    :class:`Range` is: a misspelt ``grpo.ava_rule`` in a papermill batch fails in its first
    second, not after SFT and plain GRPO have trained and AVA-GRPO builds its reward."""

    choices: tuple[str, ...]

    def admits(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)


def require_choice(dotted_key: str, value: Any) -> Any:
    """``value`` when the :class:`OneOf` field ``dotted_key`` accepts it, else a one-line
    ValueError naming the choices. For the code that reads such a setting: a profile checks
    it when read, but a section built or replaced in code (``dataclasses.replace``) is not."""
    section: Any = Profile
    *parents, name = dotted_key.split(".")
    for parent in parents:
        section = typing.get_type_hints(section)[parent]
    hint = typing.get_type_hints(section, include_extras=True)[name]
    choices = next(extra.choices for extra in getattr(hint, "__metadata__", ()) if isinstance(extra, OneOf))
    if value not in choices:
        raise ValueError(f"{dotted_key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _number_text(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
AT_LEAST_ONE = Range(low=1)
FINITE = Range()
FRACTION_BELOW_ONE = Range(low=0, high=1, high_open=True)
COUNT_OR_UNSET = Range(low=1, also=(-1,))  # -1: not set (epochs decide; every test video)
SEED = Range(low=0, high=2**32 - 1)  # numpy's seeds
PIXELS = Range(low=28 * 28)  # one merged 28 x 28 patch: the smallest frame the processor encodes
FRAME_SIDE = Range(low=28)
REWARD_NAMES = ("accuracy", "format", "length", "ava")  # the order of grpo.reward_weights and the reward functions
LENGTH_RANGE = Range(low=0, count=2, ascending=True, meaning="fewest and most tokens")
# The choices of the text fields the code branches on: checked when a profile is read, and by
# require_choice where the code reads them.
CORPUS_KINDS = ("template", "language")  # vadr1_lib.data.corpus
TRAIN_MODES = ("full", "lora", "qlora")  # vadr1_lib.model.modeling.load_for_training
MIXED_PRECISIONS = ("no", "bf16", "fp16")
FORMAT_RULES = ("any", "right")  # who is paid the format reward (rewards.FormatReward)
AVA_RULES = ("paper", "label")  # who is paid the verification bonus (rewards.AnomalyVerificationReward)
AVA_VERDICTS = ("which", "deciding-token")  # where a re-query's verdict is read


@dataclass(frozen=True)
class Relation:
    """Two fields that must agree (``first <op> second``), checked once every override is
    applied: ``--set`` of both may pass through a disagreeing middle state."""

    first: str
    op: str  # "<=" or "<"
    second: str

    def holds(self, profile: Profile) -> bool:
        a, b = get_field(profile, self.first), get_field(profile, self.second)
        return a is None or b is None or (a <= b if self.op == "<=" else a < b)


RELATIONS = (
    Relation("video.min_frames", "<=", "video.max_frames"),
    Relation("video.min_pixels", "<=", "video.max_pixels"),
    Relation("launch.machine_rank", "<", "launch.num_machines"),
)


@dataclass
class DataConfig:
    """Which dataset to use and, for Vad-Reasoning-Mini, how big to build it."""

    dataset: str = "mini"  # "mini" (built locally) or "release" (the authors' files + videos)
    release_dir: str | None = None  # folder of the release JSONL files (default: paths.release_dir())
    video_root: str | None = None  # local root the release's absolute paths are remapped onto (relative: to VADR1_DATA)
    footage: str | None = None  # folder of the user's own normal footage (default: OpenCV's vtest.avi)
    n_sft_train: Annotated[int, AT_LEAST_ONE] = 200
    n_rl: Annotated[int, NON_NEGATIVE] = 100  # 0: an empty split (a build of the SFT clips only)
    # Mini's validation split: clips drawn like the test split's (the held-out part of the
    # footage) but other clips. Settings are chosen on it; the test split is scored once.
    n_val: Annotated[int, NON_NEGATIVE] = 0
    n_test: Annotated[int, NON_NEGATIVE] = 60
    clip_frames: Annotated[int, Range(low=2)] = 32  # frames per generated clip (sampling takes them in pairs)
    clip_fps: Annotated[float, POSITIVE] = 4.0  # frame rate of the generated clips
    frame_width: Annotated[int, FRAME_SIDE] = 112  # generated clips are stored at this size
    frame_height: Annotated[int, FRAME_SIDE] = 112
    seed: Annotated[int, SEED] = 0


@dataclass
class VideoConfig:
    """How frames reach the model (``docs/fidelity.md``, "Video input" and "Inference")."""

    train_fps: Annotated[float, POSITIVE] = 2.0  # training: about 2 frames per second ...
    min_frames: Annotated[int, AT_LEAST_ONE] = 4  # ... at least this many ...
    max_frames: Annotated[int, AT_LEAST_ONE] = 16  # ... at most this many (RELATIONS)
    infer_frames: Annotated[int, AT_LEAST_ONE] = 16  # inference: this many frames uniformly over the clip
    max_pixels: Annotated[int, PIXELS] = 128 * 28 * 28  # pixel cap per frame (sides are multiples of 28)
    min_pixels: Annotated[int, PIXELS] = 4 * 28 * 28


@dataclass
class TinyModelConfig:
    """Sizes of the locally built Qwen2.5-VL (ignored when loading a hub checkpoint)."""

    hidden_size: Annotated[int, AT_LEAST_ONE] = 128
    num_layers: Annotated[int, AT_LEAST_ONE] = 4
    num_heads: Annotated[int, AT_LEAST_ONE] = 4
    num_kv_heads: Annotated[int, AT_LEAST_ONE] = 2
    intermediate_size: Annotated[int, AT_LEAST_ONE] = 256
    vision_hidden_size: Annotated[int, AT_LEAST_ONE] = 64
    vision_depth: Annotated[int, AT_LEAST_ONE] = 2
    vision_heads: Annotated[int, AT_LEAST_ONE] = 2
    vision_intermediate_size: Annotated[int, AT_LEAST_ONE] = 128
    tokens_per_second: Annotated[int, AT_LEAST_ONE] = 4  # temporal position ids per second of video
    corpus_extra_texts: Annotated[int, NON_NEGATIVE] = 0  # unused texts beyond the prompts and targets (vocabulary)
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
    seed: Annotated[int, SEED] = 0


@dataclass
class PretrainConfig:
    """Text-only next-token training of the tiny model before SFT (``vadr1_lib.training.pretrain``):
    the stand-in for the reading a Hub model has done. Hub models skip it."""

    corpus_texts: Annotated[int, NON_NEGATIVE] = 0  # texts in the corpus (vadr1_lib.data.corpus); 0: no pretraining
    # template: whole P2C-CoT targets; language: the same words without tags
    corpus: Annotated[str, OneOf(CORPUS_KINDS)] = "template"
    learning_rate: Annotated[float, POSITIVE] = 3e-3
    num_train_epochs: Annotated[float, POSITIVE] = 2.0
    max_steps: Annotated[int, COUNT_OR_UNSET] = -1  # > 0 overrides epochs
    per_device_train_batch_size: Annotated[int, AT_LEAST_ONE] = 16
    gradient_accumulation_steps: Annotated[int, AT_LEAST_ONE] = 1
    max_grad_norm: Annotated[float, NON_NEGATIVE] = 5.0
    lr_scheduler_type: str = "cosine"
    warmup_ratio: Annotated[float, FRACTION_BELOW_ONE] = 0.08
    weight_decay: Annotated[float, NON_NEGATIVE] = 0.01
    logging_steps: Annotated[int, AT_LEAST_ONE] = 5
    save_steps: Annotated[int, AT_LEAST_ONE] = 100
    seed: Annotated[int, SEED] = 0


@dataclass
class TrainConfig:
    """What SFT and GRPO both read: which weights train, in which precision, with what memory.

    One section, so that GRPO (which continues the SFT result, in the same mode) and SFT
    cannot disagree, and neither stage reads the other's settings.
    """

    mode: Annotated[str, OneOf(TRAIN_MODES)] = "full"  # which weights train (vadr1_lib.model.modeling.load_for_training)
    mixed_precision: Annotated[str, OneOf(MIXED_PRECISIONS)] = "no"
    gradient_checkpointing: bool = True
    train_vision_encoder: bool = True  # full mode: False freezes all of it but the merger
    lora_r: Annotated[int, AT_LEAST_ONE] = 16
    lora_alpha: Annotated[int, AT_LEAST_ONE] = 32
    lora_dropout: Annotated[float, FRACTION_BELOW_ONE] = 0.05


@dataclass
class SFTConfig:
    """Supervised fine-tuning (``docs/fidelity.md``, "SFT")."""

    learning_rate: Annotated[float, POSITIVE] = 1e-6
    num_train_epochs: Annotated[float, POSITIVE] = 4.0
    max_steps: Annotated[int, COUNT_OR_UNSET] = -1  # > 0 overrides epochs
    per_device_train_batch_size: Annotated[int, AT_LEAST_ONE] = 1
    gradient_accumulation_steps: Annotated[int, AT_LEAST_ONE] = 2
    max_grad_norm: Annotated[float, NON_NEGATIVE] = 5.0  # 0: no clipping
    lr_scheduler_type: str = "constant"
    warmup_ratio: Annotated[float, FRACTION_BELOW_ONE] = 0.0
    weight_decay: Annotated[float, NON_NEGATIVE] = 0.0
    assistant_only_loss: bool = True  # the release also trained on prompt tokens (False)
    # loss weight of the token that commits to the verdict (vadr1_lib.training.sft)
    decision_weight: Annotated[float, NON_NEGATIVE] = 1.0
    balanced_batches: bool = False  # every batch half Normal, half Abnormal (vadr1_lib.training.sft.ClassBalancedSampler)
    logging_steps: Annotated[int, AT_LEAST_ONE] = 1
    save_steps: Annotated[int, AT_LEAST_ONE] = 500
    seed: Annotated[int, SEED] = 42


@dataclass
class GRPOConfig:
    """(AVA-)GRPO reinforcement learning (``docs/fidelity.md``, "GRPO" and "Rewards")."""

    num_generations: Annotated[int, Range(low=2)] = 4  # G completions per video: a group's advantages need two
    beta: Annotated[float, NON_NEGATIVE] = 0.04  # KL coefficient
    learning_rate: Annotated[float, POSITIVE] = 1e-6
    lr_scheduler_type: str = "cosine"
    weight_decay: Annotated[float, NON_NEGATIVE] = 0.01
    num_train_epochs: Annotated[float, POSITIVE] = 1.0
    max_steps: Annotated[int, COUNT_OR_UNSET] = -1
    # completions per device per step (TRL counts completions)
    per_device_train_batch_size: Annotated[int, AT_LEAST_ONE] = 4
    gradient_accumulation_steps: Annotated[int, AT_LEAST_ONE] = 1
    max_completion_length: Annotated[int, AT_LEAST_ONE] = 768
    temperature: Annotated[float, POSITIVE] = 1.0
    top_p: Annotated[float, Range(low=0, high=1, low_open=True)] = 0.95
    top_k: Annotated[int, NON_NEGATIVE] = 0  # 0: no top-k (TRL's default); the release sampled with generate's default, 50
    max_grad_norm: Annotated[float, NON_NEGATIVE] = 1.0  # the trainer's default; the release clipped at 5
    # Weights of accuracy, format, length and (with AVA) the AVA reward; None: 1 each, as the release.
    reward_weights: Annotated[list[float] | None,
                              Range(count=len(REWARD_NAMES), meaning="one per reward: " + ", ".join(REWARD_NAMES))] = None
    # Who is paid the format reward: "any" well-formed completion (the paper) or only a
    # well-formed one whose verdict is right (rewards.FormatReward says why).
    format_rule: Annotated[str, OneOf(FORMAT_RULES)] = "any"
    balanced_batches: bool = False  # every step holds both verdicts (vadr1_lib.training.grpo.alternate_verdicts)
    use_ava: bool = True
    ava_abnormal_bonus: Annotated[float, FINITE] = 0.5
    ava_normal_penalty: Annotated[float, FINITE] = -0.2
    ava_trim_fraction: Annotated[float, Range(low=0, high=1, low_open=True, high_open=True)] = 0.3
    # Who gets the verification bonus: "paper" (any Abnormal answer whose cut leaves a Normal
    # answer) or "label" (only where the RL set's weak label is Abnormal: no false alarm is paid).
    ava_rule: Annotated[str, OneOf(AVA_RULES)] = "paper"
    # Where a re-query's verdict is read: "which" (its <which>) or "deciding-token" (the first
    # words that commit to a verdict, learnt from the SFT targets; for templates like Mini's).
    ava_verdict: Annotated[str, OneOf(AVA_VERDICTS)] = "which"
    length_bonus: Annotated[float, FINITE] = 0.2
    length_range_normal: Annotated[list[int], LENGTH_RANGE] = field(default_factory=lambda: [140, 261])
    length_range_abnormal: Annotated[list[int], LENGTH_RANGE] = field(default_factory=lambda: [233, 456])
    logging_steps: Annotated[int, AT_LEAST_ONE] = 1
    save_steps: Annotated[int, AT_LEAST_ONE] = 500
    seed: Annotated[int, SEED] = 42


@dataclass
class EvalConfig:
    batch_size: Annotated[int, AT_LEAST_ONE] = 8
    max_new_tokens: Annotated[int, AT_LEAST_ONE] = 1024
    do_sample: bool = False
    temperature: Annotated[float, POSITIVE] = 1.0
    top_p: Annotated[float, Range(low=0, high=1, low_open=True)] = 1.0
    bootstrap_resamples: Annotated[int, NON_NEGATIVE] = 1000  # 0: no confidence intervals
    max_test_videos: Annotated[int, COUNT_OR_UNSET] = -1  # > 0 evaluates only the first N test videos


@dataclass
class LaunchConfig:
    """How the training stages are started (``vadr1_lib.cluster.launch``): in this process, or
    under ``accelerate launch`` on several processes and machines (``docs/cluster.md``)."""

    # Processes per machine (one per GPU); more than one in all: `accelerate launch`.
    num_processes: Annotated[int, AT_LEAST_ONE] = 1
    # Machines (nodes) that each run num_processes of one stage; > 1: every machine runs the
    # same command (scripts/slurm_full_multinode.sbatch) and its rank and the main machine's
    # address come from the scheduler (SLURM_NODEID, SLURM_JOB_NODELIST) or the two fields below.
    num_machines: Annotated[int, AT_LEAST_ONE] = 1
    machine_rank: Annotated[int | None, NON_NEGATIVE] = None  # this machine's rank, by hand (RELATIONS)
    main_process_ip: str | None = None  # the address of the machine of rank 0, by hand
    main_process_port: Annotated[int, Range(low=1, high=65535)] = 29500
    accelerate_config_sft: str | None = None  # relative to configs/accelerate/
    accelerate_config_grpo: str | None = None
    torch_threads: Annotated[int, NON_NEGATIVE] = 0  # 0: leave torch's default; CPU profiles set it deliberately
    # How many independent training runs may train at once on this machine: notebook 04's
    # GRPO and AVA-GRPO (stages.ensure_rl_runs), each in its own process with torch_threads /
    # concurrent_runs threads. > 1 only for a stage that trains in one process (CPU profiles);
    # a multi-process stage owns the machine's devices.
    concurrent_runs: Annotated[int, AT_LEAST_ONE] = 1
    device: str = "auto"  # auto | cpu | cuda
    # Memory of one device in GiB, the budget plan-memory checks the stages against (None:
    # no verdict; CPU profiles plan host RAM).
    gpu_memory_gib: Annotated[float | None, POSITIVE] = None
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
    shown = path.relative_to(paths.PROJECT_ROOT) if path.is_relative_to(paths.PROJECT_ROOT) else path
    profile = _build(Profile, {"name": name, **raw}, where=str(shown))
    parsed = parse_overrides(overrides)
    for key, value in parsed.items():
        set_field(profile, key, value)
    for relation in RELATIONS:
        if not relation.holds(profile):
            first, second = get_field(profile, relation.first), get_field(profile, relation.second)
            origin = "" if {relation.first, relation.second}.isdisjoint(parsed) else " (with the overrides)"
            raise ProfileError(f"{shown}{origin}: {relation.first}={first!r} must be {relation.op} "
                               f"{relation.second}={second!r}")
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
            hint = typing.get_type_hints(type(target), include_extras=True)[part]
            if dataclasses.is_dataclass(hint):
                raise ProfileError(f"{dotted_key!r} is a section; set one of its keys instead")
            setattr(target, part, _coerce(value, hint, dotted_key))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ProfileError(f"{'.'.join(parts[: depth + 1])!r} is not a section")


def _build(cls: type, raw: dict[str, Any], where: str, prefix: str = "") -> Any:
    """``cls`` from a YAML mapping; ``where`` names the file in messages, ``prefix`` is the
    section's dotted path (``model.tiny.``)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - valid)
    if unknown:
        section = f", section {prefix[:-1]!r}" if prefix else ""
        raise ProfileError(f"{where}{section}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    kwargs = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ProfileError(f"{where}: section {prefix}{key!s} must be a mapping")
            kwargs[key] = _build(hint, value, where, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, f"{where}: {prefix}{key}")
    return cls(**kwargs)


def numeric_type(hint: Any) -> type | None:
    """``int`` or ``float`` for a numeric field's annotation (``float | None``, ``list[int]``,
    with or without a :class:`Range`), None for any other (``bool`` included)."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return numeric_type(typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType, list):
        kinds = {numeric_type(arg) for arg in typing.get_args(hint)} - {None}
        return kinds.pop() if len(kinds) == 1 else None
    return hint if hint in (int, float) else None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field annotation (its type, and its :class:`Range` when it
    has one); ints are accepted where floats are."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        kind, *extras = typing.get_args(hint)
        value = _coerce(value, kind, where)
        for valid in extras:
            if isinstance(valid, Range) and not valid.admits(value):
                raise ProfileError(f"{where}={value!r} is out of range: it must be "
                                   f"{valid.describe(integer=numeric_type(kind) is int)}")
            if isinstance(valid, OneOf) and not valid.admits(value):
                raise ProfileError(f"{where}={value!r} is not a choice: it must be {valid.describe()}")
        return value
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
