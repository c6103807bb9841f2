"""The tiny Qwen2.5-VL: built from a profile, saved and reloaded, and really seeing the video."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vadr1_lib import config, prompts
from vadr1_lib.data import video
from vadr1_lib.model import modeling


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, ci_profile):
    return modeling.build_tiny_model(ci_profile, tmp_path_factory.mktemp("tiny"), ["A fire starts on the path."])


@pytest.fixture(scope="module")
def loaded(tiny_dir, ci_profile):
    torch.set_num_threads(1)
    return modeling.load_model_and_processor(tiny_dir, ci_profile)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """Two different 8-frame clips at 2 fps, written as mp4 and read back by the library."""
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for seed in (0, 1):
        frames = np.random.RandomState(seed).randint(0, 256, (8, 56, 56, 3), dtype=np.uint8)
        paths.append(video.write_video(frames, folder / f"clip{seed}.mp4", fps=2.0))
    return paths


def _clip(path, frames: int = 4) -> video.VideoClip:
    info = video.read_video_info(path)
    return video.load_clip(path, video.uniform_frame_indices(info.num_frames, frames))


def _inputs(processor, clip):
    text = processor.apply_chat_template(prompts.build_messages("p2c"), add_generation_prompt=True, tokenize=False)
    return processor(text=[text], return_tensors="pt", **modeling.video_inputs([clip]))


def test_saved_folder_is_an_ordinary_hugging_face_checkpoint(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "processor_config.json", modeling.TINY_MARKER_FILE} <= names, names
    info = modeling.tiny_model_info(tiny_dir)
    assert info["profile"] == "ci" and info["parameters"] < 1_000_000


def test_reload_gives_identical_weights(tiny_dir, loaded, tmp_path):
    model, _ = loaded
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    model.save_pretrained(tmp_path)  # saving maps names back to the checkpoint's layout
    saved, resaved = load_file(tiny_dir / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert saved.keys() == resaved.keys() and len(saved) > 40
    for name, tensor in saved.items():
        assert torch.equal(resaved[name], tensor), name


def test_same_seed_builds_the_same_weights(tmp_path, ci_profile, tiny_dir):
    again = modeling.build_tiny_model(ci_profile, tmp_path / "again", ["A fire starts on the path."])
    first, second = load_file(tiny_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_cpu_profile_model_has_about_a_million_parameters(tmp_path):
    profile = config.load_profile("cpu")
    info = modeling.tiny_model_info(modeling.build_tiny_model(profile, tmp_path, []))
    assert 500_000 < info["parameters"] < 2_000_000


def test_video_reaches_the_forward_pass_and_changes_the_logits(loaded, clip_files):
    model, processor = loaded
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    try:
        with torch.no_grad():
            a = model(**_inputs(processor, _clip(clip_files[0]))).logits
            b = model(**_inputs(processor, _clip(clip_files[1]))).logits
    finally:
        hook.remove()
    assert {"pixel_values_videos", "video_grid_thw", "mm_token_type_ids"} <= seen[0]
    assert not torch.allclose(a[0, -1], b[0, -1])


def test_real_sampling_fps_gives_distinct_temporal_positions(loaded, ci_profile, clip_files):
    model, processor = loaded
    clip = _clip(clip_files[0], frames=8)
    assert clip.sample_fps == pytest.approx(2.0)
    inputs = _inputs(processor, clip)
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], None, inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"], attention_mask=inputs["attention_mask"])
    video = inputs["input_ids"][0] == model.config.video_token_id
    temporal = positions[0, 0][video].unique()
    # 8 frames -> 4 temporal grids, one second apart at 2 fps, tokens_per_second positions apart.
    assert len(temporal) == 4
    assert (temporal.diff() == ci_profile.model.tiny.tokens_per_second).all()


def test_generation_never_emits_vision_placeholders(loaded, clip_files):
    model, processor = loaded
    inputs = _inputs(processor, _clip(clip_files[0]))
    out = model.generate(**inputs, **modeling.generation_kwargs(processor, 40, do_sample=True, temperature=1.5))
    new = out[0, inputs["input_ids"].shape[1]:]
    banned = {processor.tokenizer.convert_tokens_to_ids(t) for t in modeling.qwen_tok.VISION_TOKENS}
    assert len(new) > 0 and not banned & set(new.tolist())


@pytest.mark.parametrize(("profile_name", "dtype"), [("qlora-24gb", torch.bfloat16), ("qlora-t4-16gb", torch.float16)])
def test_four_bit_layers_compute_in_the_profiles_dtype(profile_name, dtype):
    quantization = modeling.quantization_config(config.load_profile(profile_name))
    assert quantization.bnb_4bit_compute_dtype == dtype  # a T4 has no bf16: fp16, not fp32, is its fast path
    assert quantization.llm_int8_skip_modules == ["model.visual", "lm_head"]


def test_a_missing_local_model_folder_is_named_not_sent_to_the_hub(tmp_path, ci_profile, monkeypatch):
    (tmp_path / "runs" / "cpu" / "sft").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for typo in ("runs/cpu/sfft", "runs/sfft", str(tmp_path / "sfft"), "./sfft"):
        with pytest.raises(FileNotFoundError, match="model not found"):
            modeling.load_processor(typo, ci_profile)
    with pytest.raises(FileNotFoundError, match="folders in runs/cpu: sft"):
        modeling.load_processor("runs/cpu/sfft", ci_profile)
    modeling.check_model_source("Qwen/Qwen2.5-VL-7B-Instruct")  # a Hub id: left to transformers
