"""The memory planner against transformers' own models and published figures.

Published figures checked here (quoted from the papers, not measured on this machine):
- ZeRO paper (Rajbhandari et al. 2020, arXiv 1910.02054), Figure 1: a 7.5B-parameter model
  with mixed-precision Adam (K = 12) needs 120 GB of model states on one GPU, and on 64 GPUs
  31.4 GB with ZeRO-1, 16.6 GB with ZeRO-2, 1.9 GB with ZeRO-3.
- QLoRA paper (Dettmers et al. 2023, arXiv 2305.14314): abstract, finetuning a 65B model
  goes "from >780GB of GPU memory to <48GB"; section 3, double quantization lowers the
  quantization constants from 0.5 to 0.127 bits per parameter.
- DeepSpeed's estimators (``deepspeed/runtime/zero/stage_1_and_2.py``
  ``estimate_zero2_model_states_mem_needs``: 4Ψ + 16Ψ/N per GPU without offload;
  ``stage3.py`` ``estimate_zero3_model_states_mem_needs``: 4·largest layer + 18Ψ/N).
- Hugging Face model cards: Qwen2.5-VL-7B-Instruct 8.29B parameters, 3B 3.75B; LLaMA paper
  (Touvron et al. 2023, Table 2): 6.7B and 65.2B.
"""

import json

import pytest
import torch

from vadr1_lib import cli, config
from vadr1_lib.cluster import memory
from vadr1_lib.cluster.memory import GIB, ModelSpec
from vadr1_lib.model import modeling, tokenizer

torch.set_num_threads(1)

QWEN_7B = memory.model_spec(config.load_profile("full-4xa100"))
LLAMA_7B = ModelSpec(name="llama-7b", hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                     intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False, attention_bias=False)
LLAMA_65B = ModelSpec(name="llama-65b", hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=64,
                      intermediate_size=22016, vocab_size=32000, tie_word_embeddings=False, attention_bias=False)


def _meta_parameter_count(name: str) -> int:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**memory.KNOWN_CONFIGS[name]))
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize(("name", "exact", "published"), [
    ("Qwen/Qwen2.5-VL-7B-Instruct", 8_292_166_656, 8.29e9),
    ("Qwen/Qwen2.5-VL-3B-Instruct", 3_754_622_976, 3.75e9),
])
def test_hub_parameter_counts_match_transformers_and_model_cards(name: str, exact: int, published: float) -> None:
    counts = memory.count_parameters(memory.spec_from_hf_config(name, memory.KNOWN_CONFIGS[name]))
    assert counts.total == _meta_parameter_count(name) == exact
    assert abs(counts.total - published) < 0.005e9  # the model card rounds to two decimals


def test_llama_parameter_counts_match_the_llama_paper() -> None:
    assert memory.count_parameters(LLAMA_7B).total == 6_738_415_616  # "6.7B"
    assert abs(memory.count_parameters(LLAMA_65B).total - 65.2e9) / 65.2e9 < 0.002  # "65.2B"


@pytest.fixture(scope="module")
def tiny_model_and_spec():
    """A real tiny Qwen2.5-VL built by modeling.tiny_config from the ci profile, and its spec."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    profile = config.load_profile("ci")
    tok = tokenizer.restricted_tokenizer(["a normal street scene"])
    model = Qwen2_5_VLForConditionalGeneration(modeling.tiny_config(profile.model, tok))
    t = profile.model.tiny
    spec = ModelSpec(name="tiny", hidden_size=t.hidden_size, num_layers=t.num_layers, num_heads=t.num_heads,
                     num_kv_heads=t.num_kv_heads, intermediate_size=t.intermediate_size, vocab_size=len(tok),
                     tie_word_embeddings=True, vision_hidden_size=t.vision_hidden_size, vision_depth=t.vision_depth,
                     vision_intermediate_size=t.vision_intermediate_size)
    return model, spec


def test_tiny_parameter_count_matches_the_built_model(tiny_model_and_spec) -> None:
    model, spec = tiny_model_and_spec
    assert memory.count_parameters(spec).total == sum(p.numel() for p in model.parameters())


def test_lora_parameter_count_matches_peft_on_the_project_target_modules(tiny_model_and_spec) -> None:
    from peft import LoraConfig, get_peft_model

    model, spec = tiny_model_and_spec
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=modeling.LORA_TARGET_MODULES))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == memory.lora_parameters(spec, 4)
    assert memory.lora_parameters(QWEN_7B, 16) == 40_370_176  # r=16 on the 7B: 0.49% of its parameters


def test_tiny_spec_reads_the_built_model_when_there_is_one(tmp_path, monkeypatch, ci_profile) -> None:
    monkeypatch.setenv("VADR1_RUNS", str(tmp_path))
    profile = ci_profile
    assert memory.model_spec(profile).vocab_size == memory.TINY_VOCAB_ESTIMATE
    built = profile.base_model_dir
    built.mkdir(parents=True)
    (built / "config.json").write_text(json.dumps({"tie_word_embeddings": True, "text_config": {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "intermediate_size": 64, "vocab_size": 777}, "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 64}}))
    spec = memory.model_spec(profile)
    assert (spec.vocab_size, spec.hidden_size, spec.vision_depth) == (777, 32, 1)
    assert "estimated" not in memory.plan_memory(profile).notes[0]


def test_model_spec_from_a_local_folder_and_unknown_ids(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(memory.KNOWN_CONFIGS["Qwen/Qwen2.5-VL-3B-Instruct"]))
    profile = config.load_profile("qlora-24gb", {"model.name_or_path": str(tmp_path)})
    assert memory.count_parameters(memory.model_spec(profile)).total == 3_754_622_976
    with pytest.raises(ValueError, match="no sizes for model 'someone/unknown-model'"):
        memory.model_spec(config.load_profile("qlora-24gb", {"model.name_or_path": "someone/unknown-model"}))


# ------------------------------------------------------------------ published figures


@pytest.mark.parametrize(("zero_stage", "published_gb"), [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_model_state_formula_reproduces_zero_paper_figure_1(zero_stage: int, published_gb: float) -> None:
    states = memory.model_state_bytes(7.5e9, weight_bytes=2, grad_bytes=2, optimizer_bytes=12,
                                      zero_stage=zero_stage, num_gpus=64 if zero_stage else 1)
    assert round(sum(states) / 1e9, 1) == published_gb


def test_qlora_paper_65b_figures() -> None:
    """>780 GB for 16-bit finetuning (bf16 weights and gradients, fp32 Adam moments), <48 GB with QLoRA.

    The paper's QLoRA recipe, not this project's: LoRA r=64 on every linear layer with bf16
    adapters, 32-bit Adam, unquantized parts in bf16.
    """
    counts = memory.count_parameters(LLAMA_65B)
    full_16bit = sum(memory.model_state_bytes(counts.total, weight_bytes=2, grad_bytes=2, optimizer_bytes=8,
                                              zero_stage=0, num_gpus=1))
    assert 780e9 < full_16bit < 800e9
    base = counts.decoder_linear_weights * memory.NF4_BITS_PER_PARAMETER / 8 + (counts.total - counts.decoder_linear_weights) * 2
    adapters = sum(memory.model_state_bytes(memory.lora_parameters(LLAMA_65B, 64), weight_bytes=2, grad_bytes=2,
                                            optimizer_bytes=8, zero_stage=0, num_gpus=1))
    assert 40e9 < base + adapters < 48e9  # leaves the rest of the 48 GB card for checkpointed activations


def test_double_quantization_costs_0_127_bits_per_parameter() -> None:
    assert round(memory.NF4_BITS_PER_PARAMETER - 4, 3) == 0.127


def test_zero2_model_states_lie_between_the_paper_and_deepspeeds_estimator() -> None:
    """Ours adds DeepSpeed's fp32 gradient partition to the paper's 2Ψ + 14Ψ/N; DeepSpeed's
    estimator also keeps the 16-bit gradients unsharded (4Ψ + 16Ψ/N), an upper bound."""
    plan = memory.plan_memory(config.load_profile("full-4xa100")).stage("sft")
    psi, n = memory.count_parameters(QWEN_7B).total, 4
    ours = sum(plan.component(name).bytes for name in ("weights", "gradients", "optimizer", "fp32 gradient partition"))
    assert 2 * psi + 14 * psi / n < ours < 4 * psi + 16 * psi / n
    assert ours == pytest.approx(2 * psi + 18 * psi / n, rel=1e-9)


def test_zero3_model_states_are_deepspeeds_estimator_plus_the_16bit_gradient_partition() -> None:
    """DeepSpeed's 18Ψ/N = 2 (weights) + 16 (master, moments, fp32 gradients); ours also holds
    the 16-bit gradient partition (2Ψ/N), so it is 10% above for the 7B on 4 GPUs."""
    plan = memory.plan_memory(config.load_profile("full-4xa100")).stage("grpo")
    counts = memory.count_parameters(QWEN_7B)
    ours = sum(plan.component(name).bytes for name in ("weights", "gradients", "optimizer", "fp32 gradient partition",
                                                       "ZeRO-3 live parameters"))
    deepspeed = 4 * counts.largest_module + 18 * counts.total / 4
    assert counts.largest_module == 152064 * 3584  # the LM head / embedding matrix
    assert ours == pytest.approx(deepspeed + 2 * counts.total / 4, rel=1e-9)
    assert ours / deepspeed == pytest.approx(1.105, abs=0.005)


# ------------------------------------------------------------------ the profiles


def test_full_4xa100_fits_80gb_with_zero2_sft_and_zero3_grpo() -> None:
    plan = memory.plan_memory(config.load_profile("full-4xa100"))
    assert plan.capacity_gib == 80.0
    sft, grpo = plan.stage("sft"), plan.stage("grpo")
    assert (sft.zero_stage, grpo.zero_stage, sft.num_gpus) == (2, 3, 4)
    assert plan.fits("sft") and plan.fits("grpo")
    # bf16 weights replicated under ZeRO-2, sharded under ZeRO-3; the frozen reference sharded too
    assert sft.component("weights").bytes == 2 * plan.parameters
    assert grpo.component("weights").bytes == grpo.component("reference model").bytes == 2 * plan.parameters // 4
    # the paper's frame budget: 16 frames of 128 x 28 x 28 pixels -> 8 temporal groups x 128 tokens
    assert sft.sequence.video_tokens == 1024 and grpo.sequence.answer_tokens == 768
    assert grpo.component("KV cache").bytes == 2 * 28 * 512 * grpo.sequence.total * 4 * 2


def test_more_machines_shard_the_model_states_over_all_their_gpus() -> None:
    one, two = (memory.plan_memory(config.load_profile("full-4xa100", [f"launch.num_machines={n}"])) for n in (1, 2))
    for stage in ("sft", "grpo"):
        assert (one.stage(stage).num_gpus, two.stage(stage).num_gpus) == (4, 8)
        assert two.stage(stage).component("optimizer").bytes * 2 == pytest.approx(one.stage(stage).component("optimizer").bytes, abs=2)
    assert two.stage("grpo").component("weights").bytes == 2 * two.parameters // 8
    # generation gathers the whole policy on every GPU whatever the count: the GRPO peak falls by less than half
    assert one.stage("grpo").peak_bytes / 2 < two.stage("grpo").peak_bytes < one.stage("grpo").peak_bytes


def test_the_t4_profile_fits_with_a_margin_where_the_7b_would_not() -> None:
    plan = memory.plan_memory(config.load_profile("qlora-t4-16gb"))
    assert plan.capacity_gib == 15.0 and plan.stage("grpo").peak_bytes < 13 * memory.GIB  # 2 GiB to spare at least
    seven_b = config.load_profile("qlora-t4-16gb", {"model.name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct",
                                                    "video.max_frames": 8})
    assert not memory.plan_memory(seven_b).fits("grpo")  # even with half the frames


def test_qlora_24gb_fits_24gb() -> None:
    plan = memory.plan_memory(config.load_profile("qlora-24gb"))
    assert plan.capacity_gib == 24.0 and plan.fits("sft") and plan.fits("grpo")
    assert plan.trainable_parameters == 40_370_176
    grpo = plan.stage("grpo")
    with pytest.raises(KeyError):
        grpo.component("reference model")  # TRL disables the adapter instead of copying the model
    assert grpo.zero_stage == 0


def test_full_finetuning_of_a_7b_does_not_fit_one_24gb_gpu() -> None:
    profile = config.load_profile("full-4xa100", {"launch.num_processes": 1})
    plan = memory.plan_memory(profile, gpu_gb=24)
    assert plan.fits("sft") is False and plan.fits("grpo") is False
    sft = plan.stage("sft")
    states = sum(sft.component(name).bytes for name in ("weights", "gradients", "optimizer"))
    assert states == 8 * plan.parameters  # bf16 weights, gradients and AdamW moments, no DeepSpeed
    assert states > 24 * GIB


def test_cpu_profile_plans_host_ram_without_a_verdict() -> None:
    plan = memory.plan_memory(config.load_profile("cpu"))
    assert plan.device == "cpu" and plan.capacity_gib is None and plan.fits("sft") is None
    assert any("CPU profile" in note for note in plan.notes)
    assert plan.stage("sft").component("runtime").bytes == memory.HOST_RUNTIME_BYTES
    assert "host RAM (CPU profile)" in memory.format_plan(plan)


def test_peak_is_persistent_plus_the_largest_transient_phase() -> None:
    grpo = memory.plan_memory(config.load_profile("full-4xa100")).stage("grpo")
    transient = {phase: grpo.phase_bytes(phase) for phase in memory.TRANSIENT_PHASES}
    assert all(transient.values())
    assert grpo.peak_bytes == grpo.phase_bytes("persistent") + max(transient.values())
    with pytest.raises(ValueError, match="unknown phase"):
        grpo.phase_bytes("warmup")


# ------------------------------------------------------------------ constants measured from the project


def test_prompt_text_tokens_constant_matches_the_chat_prompt() -> None:
    from vadr1_lib import prompts

    tok = tokenizer.qwen_tokenizer()
    text = tok.apply_chat_template(prompts.build_messages("p2c", video="clip.mp4"), add_generation_prompt=True,
                                   tokenize=False, chat_template=tokenizer.CHAT_TEMPLATE)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|video_pad|>")) == 1
    assert len(ids) - 1 == memory.PROMPT_TEXT_TOKENS


def test_sft_target_tokens_constant_is_the_longest_release_target(release_sft_path) -> None:
    tok = tokenizer.qwen_tokenizer()
    lengths = [len(tok(row["think"] + "\n" + row["answer"], add_special_tokens=False)["input_ids"])
               for row in map(json.loads, release_sft_path.read_text(encoding="utf-8").splitlines())]
    assert max(lengths) == memory.SFT_TARGET_TOKENS


# ------------------------------------------------------------------ command line


def test_plan_memory_command(capsys) -> None:
    assert cli.main(["plan-memory", "--profile", "qlora-24gb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [stage["fits"] for stage in out["stages"]] == [True, True]
    assert cli.main(["plan-memory", "--profile", "qlora-24gb", "--gpu-gb", "12"]) == 0
    text = capsys.readouterr().out
    assert text.count("DOES NOT FIT") == 2 and "budget: 12 GiB" in text
