"""How much memory a profile's SFT and GRPO stages need per GPU, before renting the GPUs.

``plan_memory(profile)`` adds up, per device, what the training code of this project holds:
the model states (weights, gradients, optimizer), the activations of one micro-batch, the
KV cache of GRPO's rollouts, the frozen reference model, and a runtime overhead, and says
whether the peak fits the card. ``python -m vadr1_lib plan-memory --profile P`` prints it.
It is arithmetic, not a measurement: use it to choose a profile and to see which term to
shrink, then confirm with ``torch.cuda.max_memory_allocated`` on the real run.

Units: bytes internally, GiB (2**30) in the table, because a "24 GB" or "80 GB" card holds
24 or 80 GiB. Published figures quoted in GB (1e9) are compared in GB in the tests.

The formula (Ψ = all parameters, Ψ_t = trainable ones, N = the processes over all machines,
``launch.num_processes`` x ``launch.num_machines``):

Model states, following the ZeRO paper (Rajbhandari et al. 2020, arXiv 1910.02054, section
3.1: mixed-precision Adam holds 2Ψ + 2Ψ + KΨ bytes with K = 12 for the fp32 master weights
and the two moments; Figure 1: 7.5B parameters -> 120 GB; ZeRO-1 on 64 GPUs 31.4 GB, ZeRO-2
16.6 GB, ZeRO-3 1.9 GB). :func:`model_state_bytes` is that formula and reproduces those
numbers exactly (``tests/test_memory.py``).
- ``train.mode: full`` under DeepSpeed (N > 1, 16-bit weights): weights 2 B, gradients 2 B,
  optimizer 12 B per parameter, plus the fp32 copy of the gradient partition that
  DeepSpeed's optimizer makes at the step (4 B; DeepSpeed's own estimator,
  ``estimate_zero2_model_states_mem_needs``, counts it in its 16Ψ/N term). It exists only
  during the step, when the activations are gone, so it is a phase of its own ("step").
  ZeRO-1 shards the optimizer over N, ZeRO-2 also the gradients, ZeRO-3 also the weights.
- ``full`` in one process (no DeepSpeed): weights and gradients in the model's dtype,
  torch's AdamW keeps its two moments in the parameters' dtype: 4+4+8 B (fp32) or 2+2+4 B
  (bf16).
- ``lora``: frozen base weights in the model's dtype; LoRA adapters (rank r on the seven
  projections of every language-model layer, ``modeling.LORA_TARGET_MODULES``: r·(in+out)
  each) are fp32 (PEFT upcasts 16-bit adapters): 4 B weights + 4 B gradients + 8 B moments.
- ``qlora``: the language model's linear weights in 4-bit NF4 with double quantization,
  4 + 0.127 bits per parameter (QLoRA paper, Dettmers et al. 2023, arXiv 2305.14314,
  section 3: one fp32 absmax per 64 weights costs 0.5 bit, double quantization brings the
  constants to 8/64 + 32/(64·256) = 0.127 bit). What stays unquantized (vision tower, LM
  head, embeddings, norms, biases: ``modeling.quantization_config``) is upcast to fp32 by
  PEFT's ``prepare_model_for_kbit_training``, 4 B per parameter. Adapters as for LoRA.

Sequence length per video: video tokens = ceil(max_frames / 2) · floor(max_pixels / 28²)
(two frames per temporal patch, one token per 28×28 after the 2×2 merge; 1024 for the
paper's 16 frames of 128·28² pixels) + the chat prompt (``PROMPT_TEXT_TOKENS``) + the answer:
the longest release target (``SFT_TARGET_TOKENS``) for SFT, ``grpo.max_completion_length``
for GRPO.

Activations of one micro-batch of B sequences of S tokens, in the activation dtype (2 B
under bf16, else 4 B), counted per layer in the manner of Korthikanti et al. 2022 (arXiv
2205.05198, section 4.1) for this architecture: a Qwen2 decoder layer keeps about
7h + 3·kv_dim + 4·I values per token (norm inputs/outputs, q/k/v before and after rotary
embedding, attention output, SwiGLU's gate, up, activation and product), plus 16h bytes for
the two RMSNorms' fp32 upcasts. Attention runs through SDPA's memory-efficient kernels, so
no S² attention matrix is stored.
- with gradient checkpointing: each layer's input (L·S·B·h values) plus one layer's full
  activations twice (the recomputed forward and its gradients);
- without: every layer's full activations;
- logits: B · (logit positions) · vocab · (act + 4 + 4) bytes: the logits, their fp32
  upcast in the loss, and its fp32 gradient. SFT scores the answer (the tail from its first
  token, ``vadr1_lib.training.sft``), or every position with ``sft.assistant_only_loss: false``; GRPO
  only the completion (TRL's ``logits_to_keep``);
- the vision tower's activations the same way over its patches (4 per video token), only
  when it is trained (``full`` with ``train.train_vision_encoder``; LoRA leaves it frozen, so
  nothing is kept for its backward). A frozen encoder's weights are still counted with the
  trainable ones' gradients and optimizer states, an overestimate.

The stage peak is the persistent memory (model states, reference model, overheads) plus
the largest of the phases that never overlap: "training" (forward + backward of one
micro-batch), "step" (the optimizer step) and, for GRPO (TRL's GRPOTrainer,
``vadr1_lib.training.grpo``), "generation":
- generation: ``per_device_train_batch_size · gradient_accumulation_steps`` rollouts at
  once (TRL's default ``steps_per_generation``); KV cache 2 · L · kv_dim · S · rollouts ·
  act bytes; one layer's prefill activations; under ZeRO-3 TRL gathers the full policy for
  generation (``ds3_gather_for_generation``, default on), (1 - 1/N) of the 16-bit weights
  extra. AVA's re-asking on the trimmed video is a second generation of the same size, run
  after the first, so it does not raise the peak.
- training: activations of ``per_device_train_batch_size`` sequences; under ZeRO-3 the
  gathered live parameters, 4 B times the largest module (DeepSpeed's estimator's term).
- the reference model (``grpo.beta > 0``): a second copy of the 16-bit weights for
  ``full`` (sharded under ZeRO-3, as TRL prepares it with the policy's ZeRO stage);
  nothing for LoRA/QLoRA, where TRL disables the adapter to get the reference.
The no-grad scoring forwards (reference log-probs) are smaller than the training forward
and are not counted separately.

Runtime overhead (stated constants, not measured on a GPU here): on a GPU 1.5 GiB for the
CUDA context, cuBLAS workspaces and NCCL buffers (``CUDA_CONTEXT_BYTES``); on a CPU 1 GiB
for the interpreter and its libraries (``HOST_RUNTIME_BYTES``: importing torch,
transformers, trl and peft measured 0.76 GiB resident on the project's 2-core machine);
then 10% of everything for allocator fragmentation (``FRAGMENTATION``). ZeRO-1/2 add
DeepSpeed's gradient reduce bucket (default ``reduce_bucket_size`` 5e8 elements, 16-bit).

Model sizes come from the checkpoint's ``config.json`` fields: a table of the known hub
checkpoints (``KNOWN_CONFIGS``), a local folder's ``config.json``, or, for ``tiny``, the
built tiny model (``runs/<profile>/base-model``) or the profile's ``model.tiny`` sizes with
an estimated vocabulary when it is not built yet.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from vadr1_lib import paths
from vadr1_lib.cluster import launch
from vadr1_lib.config import Profile

GIB = 1024**3
CUDA_CONTEXT_BYTES = int(1.5 * GIB)
HOST_RUNTIME_BYTES = 1 * GIB
FRAGMENTATION = 0.10
NF4_BITS_PER_PARAMETER = 4 + 8 / 64 + 32 / (64 * 256)  # 4-bit codes + double-quantized constants (QLoRA, section 3)
DEEPSPEED_REDUCE_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default reduce_bucket_size
PROMPT_TEXT_TOKENS = 203  # system + P2C-CoT user turn + template tokens, real Qwen2.5 tokenizer, without the video
SFT_TARGET_TOKENS = 597  # longest think + "\n" + answer of Vad-Reasoning-SFT-train.jsonl (1755 rows; p99 540, mean 358)
TINY_VOCAB_ESTIMATE = 1500  # a built cpu-profile tiny model has 1349 tokens; used only before it is built
LORA_PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")  # modeling.LORA_TARGET_MODULES, per LM layer

# The fields of each checkpoint's config.json that size it, copied from the hub
# (https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/blob/main/config.json and the 3B's).
# Their parameter counts (8,292,166,656 and 3,754,622,976; the model cards say 8.29B and
# 3.75B) are checked against transformers' own model built on the meta device in the tests.
_QWEN25_VL_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                     "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2, "in_channels": 3}
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-VL-7B-Instruct": {
        "tie_word_embeddings": False,
        "text_config": {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                        "intermediate_size": 18944, "vocab_size": 152064},
        "vision_config": {**_QWEN25_VL_VISION, "out_hidden_size": 3584},
    },
    "Qwen/Qwen2.5-VL-3B-Instruct": {
        "tie_word_embeddings": True,
        "text_config": {"hidden_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
                        "intermediate_size": 11008, "vocab_size": 151936},
        "vision_config": {**_QWEN25_VL_VISION, "out_hidden_size": 2048},
    },
}

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PHASES = ("persistent", "generation", "training", "step")
TRANSIENT_PHASES = PHASES[1:]  # never alive at the same time: the peak takes the largest


@dataclass(frozen=True)
class ModelSpec:
    """The sizes that decide memory; a vision-less model (``vision_depth == 0``) is allowed for checks."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = True  # Qwen2 has q/k/v biases; LLaMA does not
    vision_hidden_size: int = 0
    vision_depth: int = 0
    vision_intermediate_size: int = 0
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    source: str = ""

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * (self.hidden_size // self.num_heads)


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters by the part of the model that decides how they are stored."""

    vision: int  # vision tower + patch merger
    decoder_linear_weights: int  # LM layers' projection matrices: 4-bit under QLoRA, LoRA's targets
    decoder_other: int  # LM layers' biases and norms
    embeddings: int  # token embedding, LM head (once when tied), final norm
    largest_module: int  # most parameters held by one module (what ZeRO-3 gathers at once)

    @property
    def total(self) -> int:
        return self.vision + self.decoder_linear_weights + self.decoder_other + self.embeddings


@dataclass(frozen=True)
class SequenceBudget:
    video_tokens: int
    prompt_text_tokens: int
    answer_tokens: int  # SFT: longest target; GRPO: max completion length
    vision_patches: int  # before the 2x2 merge: what the vision tower runs over

    @property
    def total(self) -> int:
        return self.video_tokens + self.prompt_text_tokens + self.answer_tokens

    @property
    def prompt(self) -> int:
        return self.video_tokens + self.prompt_text_tokens


@dataclass(frozen=True)
class Component:
    name: str
    bytes: int
    phase: str  # persistent | generation | training | step
    note: str = ""


@dataclass(frozen=True)
class StagePlan:
    stage: str  # sft | grpo
    zero_stage: int  # 0: no DeepSpeed
    num_gpus: int
    batch: int  # sequences per training forward
    sequence: SequenceBudget
    components: tuple[Component, ...]

    def phase_bytes(self, phase: str) -> int:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; phases: {', '.join(PHASES)}")
        return sum(c.bytes for c in self.components if c.phase == phase)

    @property
    def peak_bytes(self) -> int:
        """Persistent memory plus the largest transient phase (they never overlap)."""
        return self.phase_bytes("persistent") + max(self.phase_bytes(phase) for phase in TRANSIENT_PHASES)

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"no component {name!r} in the {self.stage} plan; have {', '.join(c.name for c in self.components)}")


@dataclass(frozen=True)
class MemoryPlan:
    profile: str
    model: str
    mode: str  # train.mode: full | lora | qlora
    device: str  # cuda | cpu
    parameters: int
    trainable_parameters: int
    capacity_gib: float | None  # per device; None: no budget to compare with
    stages: tuple[StagePlan, ...]
    notes: tuple[str, ...]

    def stage(self, name: str) -> StagePlan:
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(f"no stage {name!r}; have {', '.join(s.stage for s in self.stages)}")

    def fits(self, stage: str) -> bool | None:
        """Whether the stage's peak fits the per-device budget; None without a budget."""
        if self.capacity_gib is None:
            return None
        return self.stage(stage).peak_bytes <= self.capacity_gib * GIB

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for stage, data in zip(self.stages, out["stages"]):
            data["peak_bytes"] = stage.peak_bytes
            data["peak_gib"] = round(stage.peak_bytes / GIB, 2)
            data["fits"] = self.fits(stage.stage)
        return out


# ----------------------------------------------------------------------------- model sizes


def spec_from_hf_config(name: str, config: Mapping[str, Any], source: str = "") -> ModelSpec:
    """A :class:`ModelSpec` from a Qwen2.5-VL ``config.json`` (nested ``text_config`` or the hub's flat form)."""
    text = config.get("text_config") or config
    vision = config.get("vision_config") or {}
    try:
        return ModelSpec(
            name=name,
            hidden_size=int(text["hidden_size"]),
            num_layers=int(text["num_hidden_layers"]),
            num_heads=int(text["num_attention_heads"]),
            num_kv_heads=int(text.get("num_key_value_heads", text["num_attention_heads"])),
            intermediate_size=int(text["intermediate_size"]),
            vocab_size=int(text["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            vision_hidden_size=int(vision.get("hidden_size", 0)),
            vision_depth=int(vision.get("depth", 0)),
            vision_intermediate_size=int(vision.get("intermediate_size", 0)),
            patch_size=int(vision.get("patch_size", vision.get("spatial_patch_size", 14))),
            temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
            spatial_merge_size=int(vision.get("spatial_merge_size", 2)),
            in_channels=int(vision.get("in_channels", vision.get("in_chans", 3))),
            source=source,
        )
    except KeyError as exc:
        raise ValueError(f"{name}: config has no {exc.args[0]!r}; cannot size the model") from None


def model_spec(profile: Profile) -> ModelSpec:
    """The sizes of the profile's starting model (module docstring, last paragraph)."""
    name = profile.model.name_or_path
    if name == "tiny":
        built = profile.base_model_dir
        if (built / "config.json").is_file():
            return spec_from_hf_config("tiny", json.loads((built / "config.json").read_text()), source=f"{built}/config.json")
        t = profile.model.tiny
        return ModelSpec(name="tiny", hidden_size=t.hidden_size, num_layers=t.num_layers, num_heads=t.num_heads,
                         num_kv_heads=t.num_kv_heads, intermediate_size=t.intermediate_size, vocab_size=TINY_VOCAB_ESTIMATE,
                         tie_word_embeddings=True, vision_hidden_size=t.vision_hidden_size, vision_depth=t.vision_depth,
                         vision_intermediate_size=t.vision_intermediate_size,
                         source=f"profile model.tiny sizes; vocabulary estimated at {TINY_VOCAB_ESTIMATE} (tiny model not built yet)")
    if name in KNOWN_CONFIGS:
        return spec_from_hf_config(name, KNOWN_CONFIGS[name], source=f"https://huggingface.co/{name}/blob/main/config.json")
    local = Path(name) if Path(name).is_absolute() else paths.PROJECT_ROOT / name
    if (local / "config.json").is_file():
        return spec_from_hf_config(name, json.loads((local / "config.json").read_text()), source=f"{local}/config.json")
    raise ValueError(f"no sizes for model {name!r}: known hub checkpoints are {', '.join(KNOWN_CONFIGS)}; "
                     "or set model.name_or_path to a local folder with a config.json")


def count_parameters(spec: ModelSpec) -> ParameterCounts:
    """Exact parameter counts of a Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) with these sizes."""
    h, inter, kv = spec.hidden_size, spec.intermediate_size, spec.kv_dim
    attention = h * h + 2 * h * kv + h * h  # q, k, v, o
    mlp = 3 * h * inter  # gate, up, down
    linear = spec.num_layers * (attention + mlp)
    other = spec.num_layers * ((h + 2 * kv if spec.attention_bias else 0) + 2 * h)  # q/k/v biases, two norms
    embed = spec.vocab_size * h
    embeddings = embed * (1 if spec.tie_word_embeddings else 2) + h
    vision = 0
    largest = max(embed, h * inter)
    if spec.vision_depth:
        d, vi, m = spec.vision_hidden_size, spec.vision_intermediate_size, spec.vision_hidden_size * spec.spatial_merge_size**2
        patch_embed = spec.in_channels * spec.temporal_patch_size * spec.patch_size**2 * d
        block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * (d * vi + vi) + (vi * d + d)
        merger = d + (m * m + m) + (m * h + h)
        vision = patch_embed + spec.vision_depth * block + merger
        largest = max(largest, m * m + m, d * vi + vi)
    return ParameterCounts(vision=vision, decoder_linear_weights=linear, decoder_other=other, embeddings=embeddings,
                           largest_module=largest)


def lora_parameters(spec: ModelSpec, rank: int) -> int:
    """LoRA's A and B matrices, r·(in + out) for each of the seven projections of every LM layer."""
    h, inter, kv = spec.hidden_size, spec.intermediate_size, spec.kv_dim
    shapes = {"q": (h, h), "k": (h, kv), "v": (h, kv), "o": (h, h), "gate": (h, inter), "up": (h, inter), "down": (inter, h)}
    return spec.num_layers * sum(rank * (fan_in + fan_out) for fan_in, fan_out in (shapes[p] for p in LORA_PROJECTIONS))


# ----------------------------------------------------------------------------- building blocks


def model_state_bytes(parameters: float, *, weight_bytes: float, grad_bytes: float, optimizer_bytes: float,
                      zero_stage: int, num_gpus: int) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per GPU: the ZeRO paper's model-state formula.

    ZeRO-1 divides the optimizer states by ``num_gpus``, ZeRO-2 also the gradients, ZeRO-3
    also the weights. With (2, 2, 12) this is the paper's 2Ψ + 2Ψ + 12Ψ.
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0-3, got {zero_stage}")
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    weights = parameters * weight_bytes / (num_gpus if zero_stage >= 3 else 1)
    grads = parameters * grad_bytes / (num_gpus if zero_stage >= 2 else 1)
    optimizer = parameters * optimizer_bytes / (num_gpus if zero_stage >= 1 else 1)
    return weights, grads, optimizer


def sequence_budget(profile: Profile, spec: ModelSpec, answer_tokens: int) -> SequenceBudget:
    """Tokens of one training example at the profile's frame budget (module docstring)."""
    merged_side = spec.patch_size * spec.spatial_merge_size
    frame_groups = math.ceil(profile.video.max_frames / spec.temporal_patch_size)
    video = frame_groups * (profile.video.max_pixels // merged_side**2)
    if video <= 0:
        raise ValueError(f"video.max_pixels={profile.video.max_pixels} is below one {merged_side}x{merged_side} token")
    return SequenceBudget(video_tokens=video, prompt_text_tokens=PROMPT_TEXT_TOKENS, answer_tokens=answer_tokens,
                          vision_patches=video * spec.spatial_merge_size**2)


def layer_activation_bytes_per_token(hidden: int, kv_dim: int, intermediate: int, act_bytes: int) -> int:
    """One transformer layer's saved activations per token without recomputation (module docstring)."""
    return act_bytes * (7 * hidden + 3 * kv_dim + 4 * intermediate) + 16 * hidden


def zero_stage_of(profile: Profile, stage: str) -> int:
    """The DeepSpeed ZeRO stage a training stage runs under; 0 in a single process or without DeepSpeed."""
    if launch.world_size(profile) <= 1:
        return 0
    path = launch.accelerate_config_path(profile, stage)
    config = yaml.safe_load(path.read_text()) or {}
    if config.get("distributed_type") != "DEEPSPEED":
        return 0
    return int((config.get("deepspeed_config") or {}).get("zero_stage", 0))


# ----------------------------------------------------------------------------- the plan


def _dtype_bytes(dtype: str) -> int:
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"model.dtype must be one of {', '.join(_DTYPE_BYTES)}, got {dtype!r}")
    return _DTYPE_BYTES[dtype]


def _model_state_components(profile: Profile, spec: ModelSpec, counts: ParameterCounts, zero: int,
                            n: int) -> list[Component]:
    mode, dtype = profile.train.mode, profile.model.dtype
    w = _dtype_bytes(dtype)
    if mode == "full":
        if zero >= 1 and w == 2:
            weights, grads, optimizer = model_state_bytes(counts.total, weight_bytes=2, grad_bytes=2, optimizer_bytes=12,
                                                          zero_stage=zero, num_gpus=n)
            fp32_grads = counts.total * 4 / n
            return [
                Component("weights", int(weights), "persistent", f"{dtype}, all {counts.total / 1e9:.2f} B parameters"
                          + (f", sharded over {n} (ZeRO-3)" if zero >= 3 else ", replicated")),
                Component("gradients", int(grads), "persistent", "16-bit" + (f", sharded over {n}" if zero >= 2 else "")),
                Component("optimizer", int(optimizer), "persistent", f"AdamW: fp32 master + 2 moments = 12 B/param, sharded over {n}"),
                Component("fp32 gradient partition", int(fp32_grads), "step", f"DeepSpeed's fp32 copy at the step, 4 B/param / {n}"),
            ]
        weights, grads, optimizer = model_state_bytes(counts.total, weight_bytes=w, grad_bytes=w, optimizer_bytes=2 * w,
                                                      zero_stage=0, num_gpus=1)
        return [
            Component("weights", int(weights), "persistent", f"{dtype}, all {counts.total / 1e9:.2f} B parameters"),
            Component("gradients", int(grads), "persistent", f"{dtype}"),
            Component("optimizer", int(optimizer), "persistent", f"AdamW: 2 moments in {dtype} ({2 * w} B/param), no DeepSpeed"),
        ]
    if mode not in ("lora", "qlora"):
        raise ValueError(f"train.mode must be full, lora or qlora, got {mode!r}")
    adapters = lora_parameters(spec, profile.train.lora_r)
    shard = n if zero >= 3 else 1
    if mode == "lora":
        base = counts.total * w / shard
        base_note = f"frozen, {dtype}"
    else:
        unquantized = counts.total - counts.decoder_linear_weights
        base = (counts.decoder_linear_weights * NF4_BITS_PER_PARAMETER / 8 + unquantized * 4) / shard
        base_note = (f"{counts.decoder_linear_weights / 1e9:.2f} B in NF4 ({NF4_BITS_PER_PARAMETER:.3f} bit), "
                     f"{unquantized / 1e9:.2f} B upcast to fp32 by prepare_model_for_kbit_training")
    adapter_w, adapter_g, adapter_opt = model_state_bytes(adapters, weight_bytes=4, grad_bytes=4, optimizer_bytes=8,
                                                          zero_stage=zero, num_gpus=n)
    return [
        Component("weights", int(base), "persistent", base_note),
        Component("LoRA adapters", int(adapter_w), "persistent", f"r={profile.train.lora_r}: {adapters / 1e6:.1f} M params, fp32"),
        Component("gradients", int(adapter_g), "persistent", "adapters only, fp32"),
        Component("optimizer", int(adapter_opt), "persistent", "AdamW moments of the adapters, 8 B/param"),
    ]


def _activation_components(profile: Profile, spec: ModelSpec, batch: int, tokens: int, logit_positions: int,
                           vision_patches: int, act: int, phase: str) -> list[Component]:
    """Training-phase activations of ``batch`` sequences (module docstring)."""
    h, layers = spec.hidden_size, spec.num_layers
    per_layer = layer_activation_bytes_per_token(h, spec.kv_dim, spec.intermediate_size, act)
    checkpointing = profile.train.gradient_checkpointing
    if checkpointing:
        lm = layers * batch * tokens * h * act + 2 * batch * tokens * per_layer
        lm_note = f"checkpointed: {layers} layer inputs + one layer recomputed with its gradients"
    else:
        lm = layers * batch * tokens * per_layer
        lm_note = f"no checkpointing: all {layers} layers"
    out = [
        Component("LM activations", lm, phase, f"{batch} x {tokens} tokens, {lm_note}"),
        Component("logits", batch * logit_positions * spec.vocab_size * (act + 8), phase,
                  f"{batch} x {logit_positions} positions x {spec.vocab_size} vocab x (act + fp32 + fp32 grad)"),
    ]
    if profile.train.mode == "full" and profile.train.train_vision_encoder and spec.vision_depth:
        d = spec.vision_hidden_size
        patches = batch * vision_patches
        per_block = layer_activation_bytes_per_token(d, d, spec.vision_intermediate_size, act)
        vision = (spec.vision_depth * patches * d * act + 2 * patches * per_block if checkpointing
                  else spec.vision_depth * patches * per_block)
        out.append(Component("vision activations", vision, phase, f"{patches} patches through {spec.vision_depth} blocks"))
    return out


def _stage_plan(profile: Profile, spec: ModelSpec, counts: ParameterCounts, stage: str, act: int) -> StagePlan:
    n = launch.world_size(profile)
    zero = zero_stage_of(profile, stage)
    components = _model_state_components(profile, spec, counts, zero, n)
    w = _dtype_bytes(profile.model.dtype)
    if stage == "sft":
        batch = profile.sft.per_device_train_batch_size
        seq = sequence_budget(profile, spec, SFT_TARGET_TOKENS)
        scored = seq.answer_tokens + 1 if profile.sft.assistant_only_loss else seq.total  # the answer and <|im_end|>
        components += _activation_components(profile, spec, batch, seq.total, scored, seq.vision_patches, act, "training")
    else:
        g = profile.grpo
        batch = g.per_device_train_batch_size
        seq = sequence_budget(profile, spec, g.max_completion_length)
        if g.beta > 0 and profile.train.mode == "full":
            components.append(Component("reference model", int(counts.total * w / (n if zero >= 3 else 1)), "persistent",
                                        f"frozen copy for the KL term (beta={g.beta})" + (f", sharded over {n}" if zero >= 3 else "")))
        rollouts = batch * g.gradient_accumulation_steps
        components.append(Component("KV cache", 2 * spec.num_layers * spec.kv_dim * seq.total * rollouts * act, "generation",
                                    f"{rollouts} rollouts x {seq.total} tokens"))
        prefill_per_token = layer_activation_bytes_per_token(spec.hidden_size, spec.kv_dim, spec.intermediate_size, act)
        components.append(Component("prefill activations", rollouts * seq.prompt * prefill_per_token, "generation",
                                    f"one layer over {rollouts} x {seq.prompt} prompt tokens, no grad"))
        if zero >= 3:
            components.append(Component("gathered weights for generation", int(counts.total * w * (1 - 1 / n)), "generation",
                                        "TRL ds3_gather_for_generation: the full policy on every GPU"))
        components += _activation_components(profile, spec, batch, seq.total, g.max_completion_length, seq.vision_patches,
                                             act, "training")
    if zero in (1, 2):
        components.append(Component("ZeRO reduce bucket", DEEPSPEED_REDUCE_BUCKET_ELEMENTS * 2, "persistent",
                                    "DeepSpeed reduce_bucket_size 5e8 x 2 B"))
    if zero >= 3:
        components.append(Component("ZeRO-3 live parameters", counts.largest_module * 4, "training",
                                    "4 B x largest module (DeepSpeed's estimator)"))
    return _with_overhead(profile, stage, zero, n, batch, seq, components)


def _with_overhead(profile: Profile, stage: str, zero: int, n: int, batch: int, seq: SequenceBudget,
                   components: list[Component]) -> StagePlan:
    on_gpu = _device(profile) == "cuda"
    fixed = CUDA_CONTEXT_BYTES if on_gpu else HOST_RUNTIME_BYTES
    components.append(Component("CUDA context" if on_gpu else "runtime", fixed, "persistent",
                                "CUDA context, cuBLAS, NCCL (stated constant)" if on_gpu
                                else "Python + torch + transformers resident (stated constant)"))
    before = StagePlan(stage, zero, n, batch, seq, tuple(components))
    components.append(Component("fragmentation", int(FRAGMENTATION * before.peak_bytes), "persistent",
                                f"{FRAGMENTATION:.0%} of the rest (allocator)"))
    return StagePlan(stage, zero, n, batch, seq, tuple(components))


def _device(profile: Profile) -> str:
    return "cpu" if profile.launch.device == "cpu" else "cuda"


def plan_memory(profile: Profile, gpu_gb: float | None = None) -> MemoryPlan:
    """Per-device memory of the profile's SFT and GRPO stages (module docstring).

    ``gpu_gb`` is the per-device budget in GiB; by default the card the profile is made for
    (``launch.gpu_memory_gib``), and none for CPU profiles (their numbers are host RAM).
    """
    spec = model_spec(profile)
    counts = count_parameters(spec)
    device = _device(profile)
    capacity = gpu_gb if gpu_gb is not None else (profile.launch.gpu_memory_gib if device == "cuda" else None)
    if capacity is not None and capacity <= 0:
        raise ValueError(f"gpu_gb must be positive, got {capacity}")
    act = 2 if profile.model.dtype in ("bfloat16", "float16") or profile.train.mixed_precision in ("bf16", "fp16") else 4
    trainable = counts.total if profile.train.mode == "full" else lora_parameters(spec, profile.train.lora_r)
    notes = [f"model sizes: {spec.source}"]
    if profile.data.dataset == "mini":
        notes.append(f"SFT answer length: the release's longest target ({SFT_TARGET_TOKENS} tokens), "
                     "an upper bound for Vad-Reasoning-Mini's shorter ones")
    if device == "cpu":
        notes.append("CPU profile: the figures are host RAM of the one training process")
    elif capacity is None:
        notes.append("no card size for this profile: pass gpu_gb (--gpu-gb) to get a verdict")
    stages = tuple(_stage_plan(profile, spec, counts, stage, act) for stage in ("sft", "grpo"))
    return MemoryPlan(profile=profile.name, model=profile.model.name_or_path, mode=profile.train.mode, device=device,
                      parameters=counts.total, trainable_parameters=trainable, capacity_gib=capacity, stages=stages,
                      notes=tuple(notes))


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a text table, one block per stage."""
    where = "per GPU" if plan.device == "cuda" else "host RAM (CPU profile)"
    lines = [f"profile {plan.profile}: {plan.model}, train.mode={plan.mode}, {plan.parameters / 1e9:.3f} B parameters, "
             f"{plan.trainable_parameters / 1e6:.1f} M trainable; {where}"]
    budget = f"{plan.capacity_gib:g} GiB" if plan.capacity_gib is not None else "none"
    lines.append(f"budget: {budget}")
    for stage in plan.stages:
        seq = stage.sequence
        runner = f"DeepSpeed ZeRO-{stage.zero_stage} over {stage.num_gpus} GPUs" if stage.zero_stage else (
            f"{stage.num_gpus} process(es), no DeepSpeed")
        lines.append("")
        lines.append(f"{stage.stage.upper()}: {runner}; batch {stage.batch} x {seq.total} tokens "
                     f"({seq.video_tokens} video + {seq.prompt_text_tokens} prompt + {seq.answer_tokens} answer)")
        lines.append(f"  {'component':34s} {'phase':10s} {'GiB':>8s}  note")
        for c in stage.components:
            lines.append(f"  {c.name:34s} {c.phase:10s} {c.bytes / GIB:8.3f}  {c.note}")
        peak = stage.peak_bytes / GIB
        fits = plan.fits(stage.stage)
        verdict = ("" if fits is None else
                   f"  fits ({plan.capacity_gib - peak:.1f} GiB spare)" if fits else
                   f"  DOES NOT FIT ({peak - plan.capacity_gib:.1f} GiB over)")
        lines.append(f"  {'peak = persistent + max(other phases)':45s} {peak:8.2f}{verdict}")
    lines.append("")
    lines.extend(f"note: {n}" for n in plan.notes)
    return "\n".join(lines)
