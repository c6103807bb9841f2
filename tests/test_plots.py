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
