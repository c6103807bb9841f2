import pytest

from vadr1_lib import config


def test_every_profile_loads_with_all_sections():
    names = config.available_profiles()
    assert names == ["ci", "cpu", "full-4xa100", "qlora-24gb", "qlora-t4-16gb"]
    for name in names:
        profile = config.load_profile(name)
        assert profile.name == name
        assert set(profile.to_dict()) == {"name", "description", "data", "video", "model", "pretrain", "train", "sft", "grpo", "eval", "launch", "overrides", "variant"}


def test_paper_profile_carries_the_paper_recipe():
    p = config.load_profile("full-4xa100")
    assert p.model.name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert (p.sft.learning_rate, p.sft.num_train_epochs, p.sft.max_grad_norm) == (1e-6, 4.0, 5.0)
    effective_batch = p.launch.num_processes * p.sft.per_device_train_batch_size * p.sft.gradient_accumulation_steps
    assert effective_batch == 8
    assert p.video.max_frames == 16 and p.video.max_pixels == 128 * 28 * 28
    g = p.grpo
    assert (g.num_generations, g.beta, g.learning_rate, g.lr_scheduler_type, g.weight_decay) == (4, 0.04, 1e-6, "cosine", 0.01)
    assert (g.max_completion_length, g.temperature, g.top_p) == (768, 1.0, 0.95)
    assert (p.sft.lr_scheduler_type, p.sft.warmup_ratio) == ("linear", 0.0)  # the trainer default the release ran with
    for name in ("full-4xa100", "qlora-24gb", "qlora-t4-16gb"):  # the release's GRPO clipping and sampling
        assert (config.load_profile(name).grpo.max_grad_norm, config.load_profile(name).grpo.top_k) == (5.0, 50)
    assert p.launch.accelerate_config_sft == "zero2.yaml" and p.launch.accelerate_config_grpo == "zero3.yaml"
    assert config.load_profile("qlora-24gb").train.mode == "qlora"


@pytest.mark.parametrize("name", ["full-4xa100", "qlora-24gb", "qlora-t4-16gb"])
def test_gpu_profiles_decode_as_the_release(name):
    # The release's inference: 16 uniform frames at min = max = 128x28x28 pixels, sampled at
    # temperature 0.1 and top-p 0.9, at most 512 new tokens.
    p = config.load_profile(name)
    assert p.video.infer_frames == 16 and p.video.min_pixels == p.video.max_pixels == 128 * 28 * 28
    assert (p.eval.do_sample, p.eval.temperature, p.eval.top_p, p.eval.max_new_tokens) == (True, 0.1, 0.9, 512)


@pytest.mark.parametrize("name", ["ci", "cpu"])
def test_cpu_profiles_decode_greedily(name):
    assert config.load_profile(name).eval.do_sample is False


def test_overrides_in_both_forms_are_typed():
    p = config.load_profile("ci", ["sft.max_steps=3", "sft.learning_rate=2e-4", "model.tiny.hidden_size=48"])
    assert p.sft.max_steps == 3 and p.sft.learning_rate == 2e-4 and p.model.tiny.hidden_size == 48
    p = config.load_profile("ci", {"grpo.use_ava": False, "data.footage": "/videos"})
    assert p.grpo.use_ava is False and p.data.footage == "/videos"
    assert isinstance(config.load_profile("ci", ["sft.learning_rate=1"]).sft.learning_rate, float)


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(config.ProfileError, match="unknown profile .gpu.*ci, cpu, full-4xa100, qlora-24gb, qlora-t4-16gb"):
        config.load_profile("gpu")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sft.max_step=3", r"unknown key 'sft.max_step'.*sft.max_steps"),
        ("training.lr=1", r"unknown key 'training.lr'.*data, description, eval, grpo, launch, model, pretrain, sft, train, video"),
        ("sft.max_steps=three", "expected int"),
        ("train.gradient_checkpointing=1", "expected bool"),
        ("sft=3", "is a section"),
        ("sft.max_steps", "not of the form"),
    ],
)
def test_bad_overrides_are_errors(override, message):
    with pytest.raises(config.ProfileError, match=message):
        config.load_profile("ci", [override])


def test_unknown_yaml_key_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "bad.yaml").write_text("sft:\n  learning_rat: 0.1\n")
    monkeypatch.setattr(config.paths, "CONFIGS_DIR", tmp_path)
    with pytest.raises(config.ProfileError, match="unknown key.*learning_rat.*valid keys:.*learning_rate"):
        config.load_profile("bad")


def test_environment_variable_selects_the_notebook_profile(monkeypatch):
    monkeypatch.delenv(config.PROFILE_ENV_VAR, raising=False)
    assert config.resolve_profile_name("cpu") == "cpu"
    monkeypatch.setenv(config.PROFILE_ENV_VAR, "ci")
    assert config.resolve_profile_name("cpu") == "ci"


def test_overrides_are_recorded_and_reproduce_the_profile():
    p = config.load_profile("ci", ["sft.max_steps=3", "data.footage=/my videos", "grpo.length_range_normal=[1, 2]"])
    again = config.load_profile("ci", list(p.overrides))
    assert again.to_dict() == p.to_dict()
    with pytest.raises(config.ProfileError, match="unknown key 'overrides'"):
        config.load_profile("ci", ["overrides=1"])


def test_yaml_words_that_pyyaml_calls_booleans_stay_text_in_overrides():
    p = config.load_profile("ci", ["train.mixed_precision=no", "grpo.use_ava=false", "data.footage=off"])
    assert (p.train.mixed_precision, p.grpo.use_ava, p.data.footage) == ("no", False, "off")
    with pytest.raises(config.ProfileError, match="expected bool"):
        config.load_profile("ci", ["grpo.use_ava=yes"])  # only true/false are booleans


def test_the_profile_table_shows_only_what_applies_to_each_profile():
    table = config.compare_profiles(["cpu", "qlora-24gb"])
    assert table["model.tiny.hidden_size"]["qlora-24gb"] == config.NOT_APPLICABLE  # a 7B has no tiny sizes
    assert table["data.n_sft_train"]["qlora-24gb"] == config.NOT_APPLICABLE  # nor does it train on Mini
    assert table["model.tiny.hidden_size"]["cpu"] == config.load_profile("cpu").model.tiny.hidden_size
    cpu = config.load_profile("cpu")
    assert (table["sft.max_steps"]["cpu"] == config.NOT_APPLICABLE) == (cpu.sft.max_steps <= 0)
    assert (table["sft.num_train_epochs"]["cpu"] == config.NOT_APPLICABLE) == (cpu.sft.max_steps > 0)
