import dataclasses
import math
import typing

import pytest
import yaml

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


def _leaf_fields(cls=config.Profile, prefix=""):
    """(dotted key, annotation) of every field a YAML file or ``--set`` can give."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        if f.name in config.RESERVED_FIELDS:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name]


NUMERIC_FIELDS = {key: hint for key, hint in _leaf_fields() if config.numeric_type(hint) is not None}


def _declared_range(hint):
    return next((extra for extra in getattr(hint, "__metadata__", ()) if isinstance(extra, config.Range)), None)


def test_the_walk_finds_every_kind_of_numeric_field():
    kinds = {key: config.numeric_type(hint) for key, hint in NUMERIC_FIELDS.items()}
    assert kinds["sft.learning_rate"] is float and kinds["model.tiny.hidden_size"] is int  # nested sections too
    assert kinds["launch.gpu_memory_gib"] is float and kinds["grpo.reward_weights"] is float  # optional, list
    assert kinds["grpo.length_range_normal"] is int
    assert "grpo.use_ava" not in NUMERIC_FIELDS and "model.name_or_path" not in NUMERIC_FIELDS  # bool, str


def test_every_numeric_field_declares_its_valid_range():
    """A field added without a range would take any value, NaN included: declare one beside it."""
    undeclared = [key for key, hint in NUMERIC_FIELDS.items() if _declared_range(hint) is None]
    assert not undeclared, f"numeric profile fields without a config.Range: {undeclared}"


def _outside(valid: config.Range, kind: type) -> list:
    """Values just outside ``valid`` (NaN and infinity for floats); for a list range, lists
    with one such item, one item too many, or out of order."""
    numbers = [bound for bound in ((valid.low if valid.low_open else valid.low - 1) if valid.low is not None else None,
                                   (valid.high if valid.high_open else valid.high + 1) if valid.high is not None else None)
               if bound is not None]
    numbers = [kind(n) for n in numbers] + ([math.nan, math.inf, -math.inf] if kind is float else [])
    numbers = [n for n in numbers if not valid.admits(n)]
    if valid.count is None:
        return numbers
    inside = valid.low + 1 if valid.low is not None else 1
    lists = [[kind(inside)] * (valid.count - 1) + [n] for n in numbers] + [[kind(inside)] * (valid.count + 1)]
    if valid.ascending:
        lists.append([kind(inside + 1), kind(inside)] + [kind(inside + 1)] * (valid.count - 2))
    return lists


@pytest.mark.parametrize("key", sorted(NUMERIC_FIELDS))
def test_a_value_outside_a_fields_range_stops_with_one_line_from_set_yaml_and_notebook_overrides(key, tmp_path,
                                                                                              monkeypatch):
    hint = NUMERIC_FIELDS[key]
    valid = _declared_range(hint)
    assert valid is not None, f"{key} has no declared range"
    described = valid.describe(integer=config.numeric_type(hint) is int)
    bad_values = _outside(valid, config.numeric_type(hint))
    assert bad_values, f"no value outside {key}'s range {described!r} to try"
    (tmp_path / "profiles").mkdir()
    monkeypatch.setattr(config.paths, "CONFIGS_DIR", tmp_path)
    for bad in bad_values:
        *sections, name = key.split(".")
        nested: dict = {name: bad}
        for section in reversed(sections):
            nested = {section: nested}
        (tmp_path / "profiles" / "bad.yaml").write_text(yaml.safe_dump(nested))
        (tmp_path / "profiles" / "good.yaml").write_text("")
        attempts = {"--set": ("good", [f"{key}={yaml.safe_dump(bad, default_flow_style=True).strip()}"]),
                    "notebook": ("good", {key: bad}), "yaml": ("bad", None)}
        for origin, (profile_name, overrides) in attempts.items():
            with pytest.raises(config.ProfileError) as error:
                config.load_profile(profile_name, overrides)
            message = str(error.value)
            assert "\n" not in message and f"{key}=" in message and described in message, (origin, bad, message)
            assert (origin == "yaml") == message.startswith(str(tmp_path / "profiles" / "bad.yaml")), message


CHOICE_FIELDS = {key: extra for key, hint in _leaf_fields()
                 for extra in getattr(hint, "__metadata__", ()) if isinstance(extra, config.OneOf)}


def test_the_text_fields_the_code_branches_on_declare_their_choices():
    assert {"grpo.format_rule", "grpo.ava_rule", "grpo.ava_verdict", "train.mode", "train.mixed_precision",
            "pretrain.corpus"} <= set(CHOICE_FIELDS)


@pytest.mark.parametrize("key", sorted(CHOICE_FIELDS))
def test_a_misspelt_choice_stops_with_one_line_from_set_yaml_and_notebook_overrides(key, tmp_path, monkeypatch):
    """Every choice loads; a misspelt one is refused when the profile is read, naming the choices."""
    valid = CHOICE_FIELDS[key]
    for choice in valid.choices:
        assert config.get_field(config.load_profile("ci", [f"{key}={choice}"]), key) == choice
    (tmp_path / "profiles").mkdir()
    monkeypatch.setattr(config.paths, "CONFIGS_DIR", tmp_path)
    *sections, name = key.split(".")
    nested: dict = {name: valid.choices[0] + "s"}
    for section in reversed(sections):
        nested = {section: nested}
    (tmp_path / "profiles" / "bad.yaml").write_text(yaml.safe_dump(nested))
    (tmp_path / "profiles" / "good.yaml").write_text("")
    for profile_name, overrides in (("good", [f"{key}={valid.choices[0]}s"]), ("good", {key: valid.choices[0] + "s"}),
                                    ("bad", None)):
        with pytest.raises(config.ProfileError) as error:
            config.load_profile(profile_name, overrides)
        message = str(error.value)
        assert "\n" not in message and f"{key}={valid.choices[0] + 's'!r}" in message and valid.describe() in message


@pytest.mark.parametrize(("override", "line"), [
    ("grpo.learning_rate=nan", "grpo.learning_rate=nan is out of range: it must be a finite number > 0"),
    ("sft.learning_rate=-1e-5", "sft.learning_rate=-1e-05 is out of range: it must be a finite number > 0"),
    ("sft.max_steps=-5", "sft.max_steps=-5 is out of range: it must be -1 or an integer >= 1"),
    ("grpo.max_steps=0", "grpo.max_steps=0 is out of range: it must be -1 or an integer >= 1"),
    ("grpo.num_generations=1", "grpo.num_generations=1 is out of range: it must be an integer >= 2"),
    ("grpo.top_p=1.5", "grpo.top_p=1.5 is out of range: it must be a finite number in (0, 1]"),
    ("sft.warmup_ratio=1", "sft.warmup_ratio=1.0 is out of range: it must be a finite number in [0, 1)"),
    ("train.lora_dropout=1.0", "train.lora_dropout=1.0 is out of range: it must be a finite number in [0, 1)"),
    ("grpo.beta=-0.04", "grpo.beta=-0.04 is out of range: it must be a finite number >= 0"),
    ("grpo.ava_trim_fraction=0", "grpo.ava_trim_fraction=0.0 is out of range: it must be a finite number in (0, 1)"),
    ("video.max_pixels=100", "video.max_pixels=100 is out of range: it must be an integer >= 784"),
    ("grpo.ava_rule=labels", "grpo.ava_rule='labels' is not a choice: it must be one of paper, label"),
    ("grpo.reward_weights=[1, 1, .inf, 1]", "grpo.reward_weights=[1.0, 1.0, inf, 1.0] is out of range: it must be a "
     "list of 4, each a finite number (one per reward: accuracy, format, length, ava)"),
    ("grpo.reward_weights=[2, 1, 1]", "grpo.reward_weights=[2.0, 1.0, 1.0] is out of range: it must be a list of 4, "
     "each a finite number (one per reward: accuracy, format, length, ava)"),
    ("grpo.length_range_normal=[300, 200]", "grpo.length_range_normal=[300, 200] is out of range: it must be a list "
     "of 2, each an integer >= 0, in ascending order (fewest and most tokens)"),
    ("video.min_frames=32", "configs/profiles/ci.yaml (with the overrides): video.min_frames=32 must be <= "
     "video.max_frames=4"),
    ("video.min_pixels=100352", "configs/profiles/ci.yaml (with the overrides): video.min_pixels=100352 must be <= "
     "video.max_pixels=3136"),
])
def test_bad_settings_are_named_with_their_value_and_range(override, line):
    with pytest.raises(config.ProfileError) as error:
        config.load_profile("ci", [override])
    assert str(error.value) == line


def test_fields_that_must_agree_are_checked_once_every_override_is_applied(tmp_path, monkeypatch):
    profile = config.load_profile("ci", ["video.min_frames=8", "video.max_frames=16"])  # 8 > 4 only in between
    assert (profile.video.min_frames, profile.video.max_frames) == (8, 16)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "bad.yaml").write_text("video:\n  min_frames: 16\n  max_frames: 8\n")
    monkeypatch.setattr(config.paths, "CONFIGS_DIR", tmp_path)
    with pytest.raises(config.ProfileError, match=r"bad.yaml: video.min_frames=16 must be <= video.max_frames=8$"):
        config.load_profile("bad")
