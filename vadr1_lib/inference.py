"""Generation: one video from the command line, or a whole split into a predictions file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vadr1_lib import modeling, prompts, video
from vadr1_lib.config import Profile


@dataclass(frozen=True)
class GenerationResult:
    text: str
    new_tokens: int
    seconds: float
    frames: int
    video_tokens: int


def inference_clip(path: Path, profile: Profile) -> video.VideoClip:
    """The inference view of a video: ``infer_frames`` frames uniformly over all of it."""
    info = video.read_video_info(path)
    return video.load_clip(path, video.uniform_frame_indices(info.num_frames, profile.video.infer_frames))


def chat_messages(prompt_kind: str = "p2c", prompt_text: str | None = None) -> list[dict]:
    """System + user turn with one video slot; ``prompt_text`` replaces the user instruction."""
    messages = prompts.build_messages(prompt_kind)
    if prompt_text is not None:
        messages[-1]["content"][-1]["text"] = prompt_text
    return messages


@torch.no_grad()
def generate_for_video(model_dir: Path | str, video_path: Path, profile: Profile, *, prompt: str | None = None,
                       max_new_tokens: int | None = None) -> GenerationResult:
    """Greedy completion of one model for one video (the ``generate`` command)."""
    clip = inference_clip(video_path, profile)  # fails fast on a bad video, before loading a model
    model, processor = modeling.load_model_and_processor(model_dir, profile)
    model.eval()
    text = processor.apply_chat_template(chat_messages(prompt_text=prompt), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], return_tensors="pt", **modeling.video_inputs([clip])).to(model.device)
    kwargs = modeling.generation_kwargs(processor, max_new_tokens or profile.eval.max_new_tokens)
    start = time.perf_counter()
    output = model.generate(**inputs, **kwargs)
    seconds = time.perf_counter() - start
    new = output[0, inputs["input_ids"].shape[1]:]
    return GenerationResult(
        text=processor.decode(new, skip_special_tokens=True),
        new_tokens=int(new.numel()),
        seconds=seconds,
        frames=len(clip.frames),
        video_tokens=int((inputs["input_ids"] == model.config.video_token_id).sum()),
    )
