"""Models and processors: the tiny local Qwen2.5-VL and hub checkpoints, one code path.

The CPU profiles cannot download ``Qwen/Qwen2.5-VL-7B-Instruct``, and could not train it if
they could. Instead :func:`build_tiny_model` creates a ``Qwen2_5_VLForConditionalGeneration``
with every part of the real architecture (vision tower with window attention and patch
merger, 3D M-RoPE, the LM) at toy sizes, with Qwen2.5's real tokenizer restricted to the
corpus it will see (:mod:`vadr1_lib.model.tokenizer`), and saves it as an ordinary Hugging Face
folder. :func:`load_model_and_processor` then loads that folder with exactly the
``from_pretrained`` calls that load the 7B checkpoint on a GPU, so the notebooks never branch
on "tiny or real".

Pitfalls this module handles (measured: ``docs/measurements.md``, "Pitfalls met"):
- ``mrope_section`` must sum to ``head_dim / 2``: it is scaled from the 7B's [16, 24, 24].
- Temporal position ids are ``second_per_grid * tokens_per_second`` truncated to integers,
  so the real sampling fps must reach the processor (:func:`video_inputs`), or every frame of
  a short clip lands on position 0.
- The video processor's default size enlarges small frames: its pixel range comes from the
  profile.
- An untrained model can emit ``<|video_pad|>`` and friends, which breaks the next forward
  pass's token/feature count check: generation suppresses the vision tokens
  (:func:`generation_kwargs`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.utils import logging as transformers_logging
from transformers.video_utils import VideoMetadata

from vadr1_lib.config import ModelConfig, Profile, VideoConfig, require_choice
from vadr1_lib.data.video import VideoClip
from vadr1_lib.model import tokenizer as qwen_tok
from vadr1_lib.stage_marker import StageMarker

# transformers draws tqdm bars while it loads and writes weights; a saved notebook keeps
# them as "0%" lines. Stages print their own progress as text (vadr1_lib.progress).
transformers_logging.disable_progress_bar()

TINY_MARKER_FILE = "vadr1_tiny.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def configure_threads(profile: Profile) -> None:
    """Set torch's CPU thread count from the profile (oversubscription on 2 shared cores is slow)."""
    if profile.launch.torch_threads > 0:
        torch.set_num_threads(profile.launch.torch_threads)


def pick_device(profile: Profile) -> torch.device:
    if profile.launch.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(profile.launch.device)


def _mrope_section(head_dim: int) -> list[int]:
    """Split ``head_dim / 2`` rotary frequencies over (time, height, width) like the 7B's 16:24:24."""
    half = head_dim // 2
    time = max(1, round(half * 16 / 64))
    height = (half - time) // 2
    return [time, height, half - time - height]


def tiny_config(model: ModelConfig, tok: Any) -> Qwen2_5_VLConfig:
    sizes = model.tiny
    head_dim = sizes.hidden_size // sizes.num_heads
    ids = {name: tok.convert_tokens_to_ids(name) for name in qwen_tok.VISION_TOKENS}
    text_config = {
        # A Hub checkpoint's embedding has more rows than its tokenizer has tokens (padded
        # for fast matmuls); the full-vocabulary tiny model keeps that shape.
        "vocab_size": qwen_tok.HUB_EMBEDDING_ROWS if sizes.vocabulary == "full" else len(tok),
        "hidden_size": sizes.hidden_size,
        "intermediate_size": sizes.intermediate_size,
        "num_hidden_layers": sizes.num_layers,
        "num_attention_heads": sizes.num_heads,
        "num_key_value_heads": sizes.num_kv_heads,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": _mrope_section(head_dim)},
        "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": sizes.tie_word_embeddings,
    }
    vision_config = {
        "depth": sizes.vision_depth,
        "hidden_size": sizes.vision_hidden_size,
        "intermediate_size": sizes.vision_intermediate_size,
        "num_heads": sizes.vision_heads,
        "out_hidden_size": sizes.hidden_size,
        "tokens_per_second": sizes.tokens_per_second,
        "fullatt_block_indexes": [sizes.vision_depth - 1],
        "window_size": 112,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=sizes.tie_word_embeddings,
    )


def build_processor(tok: Any, video: VideoConfig) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL's processor with frame sizes from the profile (pixel cap, multiples of 28)."""
    size = {"shortest_edge": video.min_pixels, "longest_edge": video.max_pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=True),
        tokenizer=tok,
        chat_template=qwen_tok.CHAT_TEMPLATE,
    )


def build_tiny_model(profile: Profile, out_dir: Path, corpus: Iterable[str]) -> Path:
    """Create, seed and save the profile's tiny Qwen2.5-VL with a vocabulary for ``corpus``.

    The corpus should hold every text the model will read or write (prompts, chat template
    text, training targets): on those texts the restricted tokenizer segments exactly like
    Qwen2.5, and anything else still encodes from the 256 byte tokens. With
    ``model.tiny.vocabulary: full`` the corpus is ignored: the model gets all of Qwen2.5's
    tokens at their real ids and a Hub checkpoint's embedding shape, so that nothing
    downstream can come to depend on the restricted vocabulary's renumbered ids.
    """
    texts = tiny_corpus(corpus)
    vocabulary = profile.model.tiny.vocabulary
    if vocabulary not in ("restricted", "full"):
        raise ValueError(f"model.tiny.vocabulary must be 'restricted' or 'full', got {vocabulary!r}")
    tok = qwen_tok.qwen_tokenizer() if vocabulary == "full" else qwen_tok.restricted_tokenizer(texts)
    config = tiny_config(profile.model, tok)
    torch.manual_seed(profile.model.seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    build_processor(tok, profile.video).save_pretrained(out_dir)
    marker = {
        "profile": profile.name,
        "seed": profile.model.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tok),
        "corpus_texts": len(texts),
        "corpus_sha256": corpus_sha256(texts),
        "identity": tiny_model_identity(profile.model, texts),
    }
    (out_dir / TINY_MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    return out_dir


def tiny_corpus(corpus: Iterable[str]) -> list[str]:
    """The texts a tiny vocabulary is built from: ``corpus`` plus :func:`default_corpus`, sorted."""
    return sorted(set(corpus) | set(default_corpus()))


def corpus_sha256(corpus: Iterable[str]) -> str:
    """Identity of a tiny vocabulary's corpus (a cached model is reused only for the same one)."""
    return hashlib.sha256("\n\x00".join(tiny_corpus(corpus)).encode()).hexdigest()


def tiny_model_identity(model: ModelConfig, corpus: Iterable[str]) -> str:
    """What a tiny checkpoint is: its vocabulary's corpus and every model setting (sizes,
    seed, dtype). A cached one is reused only when both match, so changing ``model.tiny.*``
    builds a new model instead of silently training the old one."""
    blob = json.dumps({"corpus": corpus_sha256(corpus), "model": asdict(model)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_corpus() -> list[str]:
    """Texts every tiny model must segment exactly: the chat template's fixed text and the prompts."""
    from vadr1_lib import prompts  # the single prompt definition

    fixed = ["system\nYou are a helpful assistant.", "user\n", "assistant\n", "\n"]
    return fixed + [prompts.SYSTEM_PROMPT, *prompts.PROMPT_KINDS.values()]


def tiny_model_info(model_dir: Path) -> dict[str, Any] | None:
    """The marker written by :func:`build_tiny_model`, or None for any other checkpoint."""
    marker = Path(model_dir) / TINY_MARKER_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def model_identity(model_path: str | Path) -> str:
    """What a model *is*, independent of where it lies: a trained stage's fingerprint, the
    tiny model's identity, else the name (a Hub id). Fingerprints and prediction caches use
    this instead of the path, so a run folder copied or moved elsewhere is still recognised
    and nothing retrains."""
    folder = Path(model_path)
    marker = StageMarker(folder).read() if folder.is_dir() else None
    if marker is not None:
        return f"{marker['stage']}:{marker['fingerprint']}"
    info = tiny_model_info(folder) if folder.is_dir() else None
    return f"tiny:{info.get('identity')}" if info else str(model_path)


ADAPTER_CONFIG = "adapter_config.json"
# LoRA goes on the language model's attention and MLP projections only; the vision tower
# (model.visual.*) keeps its pretrained weights (and, under QLoRA, full precision).
LORA_TARGET_MODULES = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base_record(adapter_dir: str | Path) -> dict[str, str]:
    """What a finished adapter stage keeps about its base model (``adapter_base`` in its
    stage record, read by :func:`adapter_base`): the base's identity (:func:`model_identity`),
    the path it was loaded from, and that path relative to the adapter's folder."""
    base = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    record = {"identity": model_identity(base), "path": base}
    if Path(base).is_dir():
        record["relative_path"] = os.path.relpath(Path(base).resolve(), Path(adapter_dir).resolve())
    return record


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model an adapter folder was trained on, found by what it is.

    Why not PEFT's ``base_model_name_or_path``: it is the absolute path the base was loaded
    from, so a run folder moved to a cluster or a drive would load the base from the old
    place, or fail. A finished stage's record (:func:`adapter_base_record`) keeps the base's
    identity; the base is the first of two places whose model has that identity: where it
    lay relative to the adapter (the base model of the same run folder, moved with it), then
    the recorded path (a Hub id, or a folder outside the run folder). A checkpoint, which has
    no stage record, names its base as PEFT does.
    """
    adapter_dir = Path(adapter_dir)
    recorded = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    base = (StageMarker(adapter_dir).read() or {}).get("adapter_base")
    if base is None:
        return recorded
    places = ([str(adapter_dir / base["relative_path"])] if "relative_path" in base else []) + [base["path"]]
    for place in places:
        if model_identity(place) == base["identity"]:
            return place
    raise FileNotFoundError(f"the base model of adapter {adapter_dir} ({base['identity']}) is in none of "
                            f"{', '.join(places)}; put it back beside the run folder as it was trained "
                            f"({base.get('relative_path', base['path'])} from the adapter)")


def check_model_source(name_or_path: str | Path) -> None:
    """Fail plainly when a local checkpoint folder is missing.

    transformers reads any string that is not an existing folder as a Hub id, so a mistyped
    ``runs/cpu/sfft`` would end in a traceback about repository names. A Hub id is
    ``owner/name`` (or a bare name): a name with more parts, an absolute, ``./`` or ``~``
    path, or one whose first folder exists here is meant as a local folder.
    """
    path, text = Path(name_or_path), str(name_or_path)
    if path.exists():
        return
    meant_local = (path.is_absolute() or text.startswith((".", "~")) or len(path.parts) > 2
                   or (len(path.parts) == 2 and Path(path.parts[0]).is_dir()))
    if meant_local:
        beside = sorted(p.name for p in path.parent.iterdir() if p.is_dir()) if path.parent.is_dir() else []
        raise FileNotFoundError(f"model not found: no folder {text}"
                                + (f" (folders in {path.parent}: {', '.join(beside[:12])})" if beside else ""))


def load_processor(name_or_path: str | Path, profile: Profile) -> Qwen2_5_VLProcessor:
    """The checkpoint's processor with frame sizes from the profile."""
    check_model_source(name_or_path)
    processor = AutoProcessor.from_pretrained(str(name_or_path))
    size = {"shortest_edge": profile.video.min_pixels, "longest_edge": profile.video.max_pixels}
    processor.video_processor.size = size
    processor.image_processor.size = size
    processor.video_processor.cap_pixels_per_frame = True
    return processor


# Module-name prefixes that stay unquantized. transformers matches them from the start of
# the module's full name (or as its suffix), so the vision tower is "model.visual": a bare
# "visual" matched nothing and quantized the whole tower.
QLORA_UNQUANTIZED_MODULES = ["model.visual", "lm_head"]


def quantization_config(profile: Profile) -> Any:
    """4-bit NF4 (QLoRA) for ``train.mode == "qlora"``; None otherwise.

    The vision tower and the LM head stay unquantized: they are small next to the LM's
    layers, and the merger's output feeds every video token.
    """
    if profile.train.mode != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=_DTYPES[profile.model.dtype],
                              llm_int8_skip_modules=QLORA_UNQUANTIZED_MODULES)


def _load_base(name_or_path: str | Path, profile: Profile, quantize: bool) -> Qwen2_5_VLForConditionalGeneration:
    quant = quantization_config(profile) if quantize else None
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(name_or_path),
        dtype=_DTYPES[profile.model.dtype],
        attn_implementation=profile.model.attn_implementation,
        quantization_config=quant,
    )


def load_model_and_processor(
    name_or_path: str | Path, profile: Profile, *, device: torch.device | None = None, trainable_adapter: bool = False
) -> tuple[Any, Qwen2_5_VLProcessor]:
    """Load a Qwen2.5-VL checkpoint (local folder, hub id, or LoRA adapter folder) and its processor.

    The same call loads the tiny folder on a CPU and ``Qwen/Qwen2.5-VL-7B-Instruct`` on a GPU;
    an adapter folder (``adapter_config.json``) is loaded onto its base (:func:`adapter_base`),
    quantized again when it was trained with QLoRA. The processor's frame size comes from the profile.
    """
    processor = load_processor(name_or_path, profile)
    if is_adapter(name_or_path):
        from peft import PeftModel

        stage = StageMarker(Path(name_or_path)).read() or {}
        base_path = adapter_base(name_or_path)
        base = _load_base(base_path, profile, quantize=stage.get("mode") == "qlora")
        model = PeftModel.from_pretrained(base, str(name_or_path), is_trainable=trainable_adapter)
        for adapter in model.peft_config.values():
            # PEFT would save the adapter file's old path again; a stage trained further
            # (GRPO from SFT's adapter) records the base where it was found.
            adapter.base_model_name_or_path = base_path
    else:
        model = _load_base(name_or_path, profile, quantize=False)
    if getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_loaded_in_4bit", False):
        model.to(device or pick_device(profile))
    return model, processor


def freeze_vision_encoder(model: Any) -> None:
    """Stop training the vision encoder's patch embedding and blocks; the merger, which maps
    its features into the language model's space, keeps training.

    Why an option: no gradient then flows into the encoder, so its backward pass is skipped
    (measured: a fifth of a cpu-profile step), and a randomly initialised encoder's features
    already separate the cpu profile's clips (a linear probe on them: 0.78).
    """
    for name, parameter in model.model.visual.named_parameters():
        if not name.startswith("merger."):
            parameter.requires_grad_(False)


def load_for_training(name_or_path: str | Path, profile: Profile) -> tuple[Any, Qwen2_5_VLProcessor]:
    """The model SFT trains, by ``train.mode``: full weights, LoRA adapters, or QLoRA (4-bit base + LoRA).

    A LoRA/QLoRA run that starts from an adapter folder keeps training that adapter.
    """
    mode = require_choice("train.mode", profile.train.mode)
    if mode == "full" or is_adapter(name_or_path):
        model, processor = load_model_and_processor(name_or_path, profile, trainable_adapter=True)
        if mode == "full" and not profile.train.train_vision_encoder:
            freeze_vision_encoder(model)
        return model, processor
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    processor = load_processor(name_or_path, profile)
    model = _load_base(name_or_path, profile, quantize=mode == "qlora")
    if mode == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=profile.train.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.to(pick_device(profile))
    lora = LoraConfig(r=profile.train.lora_r, lora_alpha=profile.train.lora_alpha, lora_dropout=profile.train.lora_dropout,
                      target_modules=LORA_TARGET_MODULES, task_type="CAUSAL_LM")
    return get_peft_model(model, lora), processor


def video_inputs(clips: Sequence[VideoClip]) -> dict[str, Any]:
    """Processor keyword arguments for decoded clips: frames plus their real sampling fps.

    Qwen2.5-VL places frame pair t at ``t * (2 / fps) * tokens_per_second``; frames handed
    over without metadata are assumed to be at 24 fps, which collapses a short clip's
    temporal positions onto one value.
    """
    return {
        "videos": [clip.frames for clip in clips],
        "video_metadata": [
            VideoMetadata(total_num_frames=len(clip.frames), fps=float(clip.sample_fps),
                          height=clip.frames.shape[1], width=clip.frames.shape[2])
            for clip in clips
        ],
        "do_sample_frames": False,
    }


class ReplyLocator:
    """Which tokens of a rendered chat are the assistant's reply: the tokens that carry the
    SFT loss and that VANE scores.

    Hub checkpoints ship chat templates without ``{% generation %}`` markers, so
    transformers' ``return_assistant_tokens_mask`` gives an all-zero mask for them (and only
    warns). Instead, the template is rendered once around a placeholder reply to learn what
    it writes after the reply (for Qwen's ChatML, ``<|im_end|>`` and a newline); the reply
    is then the run of tokens just before that closing text. The reply's tokens and the
    first token of the closing text (the end-of-turn token the model must learn to emit)
    are marked; the formatting after it never is, since generation stops before it.

    Every located reply is checked token for token, so a template that rewrites the reply
    (some strip reasoning text) or renders something between the generation prompt and
    the reply fails with a message instead of training on the wrong tokens.
    """

    _PLACEHOLDER = "REPLY"

    def __init__(self, processor: Any) -> None:
        from vadr1_lib import prompts

        self.tokenizer = processor.tokenizer
        messages = prompts.build_messages("p2c")
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = processor.apply_chat_template(prompts.build_messages("p2c", target=self._PLACEHOLDER), tokenize=False)
        after_prompt = full[len(prompt):] if full.startswith(prompt) else None
        if after_prompt is None or not after_prompt.startswith(self._PLACEHOLDER):
            raise ValueError("the chat template does not render the assistant's reply right after its generation "
                             "prompt, so the reply's tokens cannot be located; use a Qwen2.5-VL chat template")
        self.closing_ids = self.tokenizer(after_prompt[len(self._PLACEHOLDER):], add_special_tokens=False)["input_ids"]
        if not self.closing_ids:
            raise ValueError("the chat template writes nothing after the assistant's reply: no end-of-turn token to learn")

    def mask(self, input_ids: torch.Tensor, reply: str) -> torch.Tensor:
        """A 0/1 mask over ``input_ids`` (one unpadded rendered chat ending with ``reply``'s turn)."""
        reply_ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"] + self.closing_ids[:1]
        end = input_ids.numel() - len(self.closing_ids) + 1
        start = end - len(reply_ids)
        if start < 0 or input_ids[start:end].tolist() != reply_ids or input_ids[end:].tolist() != self.closing_ids[1:]:
            raise ValueError("the rendered chat does not end with the reply's tokens and the template's closing text")
        mask = torch.zeros_like(input_ids)
        mask[start:end] = 1
        return mask


def vision_token_ids(processor: Qwen2_5_VLProcessor) -> torch.Tensor:
    """Ids of the vision placeholder tokens (never predicted, never generated)."""
    return torch.tensor([processor.tokenizer.convert_tokens_to_ids(t) for t in qwen_tok.VISION_TOKENS])


def generation_kwargs(processor: Qwen2_5_VLProcessor, max_new_tokens: int, *, do_sample: bool = False,
                      temperature: float = 1.0, top_p: float = 1.0) -> dict[str, Any]:
    """``generate`` arguments shared by inference, the CLI and GRPO's verifier.

    The vision placeholder tokens are suppressed: a completion containing one would be
    re-read as a video slot on the next forward pass and fail its feature-count check.
    """
    tok = processor.tokenizer
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "suppress_tokens": vision_token_ids(processor).tolist(),
        "pad_token_id": tok.pad_token_id,
    }
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    return kwargs
