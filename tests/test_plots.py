"""Figures: the smoothing the reward curves are read through."""

import numpy as np

from vadr1_lib import plots


def test_moving_average_is_the_mean_of_each_value_and_those_before_it():
    assert plots.moving_average([1, 2, 3, 4, 5], 2).tolist() == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert plots.moving_average([1, 1, 4], 3).tolist() == [1.0, 1.0, 2.0]  # fewer values at the start
    assert plots.moving_average([3.0], 5).tolist() == [3.0]


def test_smoothed_curves_draw_the_raw_values_and_their_trend(tmp_path):
    fig = plots.curves({"reward": ([1, 2, 3, 4], [0.0, 1.0, 0.0, 1.0])}, smooth=2, save_to=tmp_path / "c.png")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and np.allclose(lines[1].get_ydata(), [0.0, 0.5, 0.5, 0.5])
    assert (tmp_path / "c.png").is_file()


def test_frame_grids_stay_within_a_notebooks_width_and_wrap_into_rows():
    frames = np.zeros((16, 56, 72, 3), dtype=np.uint8)
    fig = plots.frame_grid(frames, columns=16)
    assert fig.get_figwidth() <= plots.NOTEBOOK_WIDTH
    fig = plots.frame_grid(frames)  # 8 a row by default: two rows
    assert len([ax for ax in fig.axes if ax.images]) == 16 and fig.axes[8].get_position().y0 < fig.axes[0].get_position().y0


def test_a_grpo_group_stacks_negative_rewards_below_zero_and_marks_the_mean():
    fig = plots.grpo_group({"accuracy": [1.0, 0.0], "ava": [0.5, -0.2]}, [1.0, -1.0])
    left = fig.axes[0]
    heights = sorted((round(p.get_y(), 3), round(p.get_height(), 3)) for p in left.patches)
    assert (0.0, -0.2) in heights and (1.0, 0.5) in heights  # -0.2 hangs from 0, +0.5 sits on the 1.0
    assert "group mean 0.65" in [t.get_text() for t in left.get_legend().get_texts()]


def test_spans_by_model_draws_only_the_spans_that_exist():
    fig = plots.spans_by_model([("v1", (0.2, 0.5), {"SFT": (0.1, 0.4), "GRPO": None}), ("v2", None, {"SFT": None, "GRPO": (0.3, 0.6)})])
    assert len(fig.axes[0].patches) == 3  # v1: true + SFT; v2: GRPO
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["true", "SFT", "GRPO"]
    # A model without a single span is still named, and the legend says why it has no bar.
    fig = plots.spans_by_model([("v1", (0.2, 0.5), {"SFT": (0.1, 0.4), "AVA-GRPO": None})])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == \
        ["true", "SFT", "AVA-GRPO (no span in these rows)"]


def test_curve_panels_draw_every_run_on_each_quantity_it_logged():
    runs = {"GRPO": {"kl": [0.0, 0.1, 0.2], "reward": [1, 2, 3]}, "AVA-GRPO": {"kl": [0.0, 0.2, 0.1], "ava": [0.1, 0.0, 0.5]}}
    fig = plots.curve_panels(runs, [("kl", "KL"), ("ava", "AVA reward"), ("reward", "total")])
    kl, ava, total = fig.axes[:3]
    assert [line.get_label() for line in kl.get_lines()] == ["GRPO", "AVA-GRPO"]
    assert [line.get_label() for line in ava.get_lines()] == ["AVA-GRPO"]  # plain GRPO has no AVA reward
    assert kl.get_lines()[0].get_color() == total.get_lines()[0].get_color()  # one colour per run throughout


def test_text_panels_show_each_text_under_its_name_and_cut_long_ones():
    fig = plots.text_panels({"before": "x" * 2000, "after": "<think>fine</think>"}, max_chars=100)
    shown = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert shown[0].startswith("before") and "[1900 more characters]" in shown[0]
    assert shown[1].startswith("after") and "<think>fine</think>" in shown[1]


def test_verdict_histograms_leave_out_clips_without_a_deciding_token():
    fig = plots.verdict_histograms({"base": ([0.1, None], [0.9]), "SFT": ([0.2], [0.8, 0.7])})
    counts = [sum(p.get_height() for p in ax.patches) for ax in fig.axes]
    assert counts == [2, 3]


def test_the_taxonomy_keeps_each_main_class_with_its_sub_classes_in_one_column():
    from vadr1_lib.data import taxonomy

    fig = plots.taxonomy_tree(taxonomy.TAXONOMY)
    texts = fig.axes[0].texts
    column_of = {t.get_text(): int(t.get_position()[0] * 3) for t in texts}  # an indent stays inside its column
    for mains in taxonomy.TAXONOMY.values():
        for main, subs in mains.items():
            assert {column_of[sub] for sub in subs} == {column_of[main]}, main
    assert len({t.get_position()[0] // (1 / 3) for t in texts}) == 3
