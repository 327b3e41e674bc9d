"""The evaluation's pictures: the attention figure's CAM bar chart and SAM colour scale."""

import numpy as np
import torch

from dagan.eval.visualize import HEADER, HEAT_ANCHORS, attention_figure, channel_chart, colour_bar, sample_grid

BAR = np.array([59, 82, 139], dtype=np.uint8)


def _bar_heights(chart: np.ndarray) -> list[int]:
    """Bar pixels per column run, left to right (one number per bar)."""
    is_bar = (chart == BAR).all(axis=2)
    columns = is_bar.sum(axis=0)
    heights, inside = [], False
    for count in columns:
        if count and not inside:
            heights.append(int(count))
        inside = bool(count)
    return heights


def test_cam_chart_draws_one_bar_per_channel_proportional_to_its_weight():
    chart = channel_chart(torch.tensor([0.25, 1.0, 0.5, 0.0]), height=136)
    heights = _bar_heights(chart)
    assert len(heights) == 4 and heights[3] <= 1  # a weight of 0: a bar on the axis
    full = heights[1]
    assert full > 100 and abs(heights[0] - full / 4) <= 1.5 and abs(heights[2] - full / 2) <= 1.5


def test_colour_bar_runs_from_the_lowest_colour_at_the_bottom_to_the_highest_at_the_top():
    bar = colour_bar(0.2, 0.8, 128)
    column = bar[:, 6]
    assert (column[6] == HEAT_ANCHORS[-1]).all() and (column[128 - 7] == HEAT_ANCHORS[0]).all()


def test_attention_figure_has_a_header_and_a_row_per_sample_with_every_module():
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    generated = torch.zeros(2, 3, 32, 32)
    sam = torch.full((2, 1, 32, 32), 0.4)
    sam[1] = 0.6
    attention = {"sam": sam, "cam": torch.rand(2, 16, 1, 1)}
    figure = attention_figure(labels, generated, attention, [[0, 0, 0]])
    assert figure.shape[0] == HEADER + 2 * 128 + 2  # header, two rows enlarged to 128 pixels, a gap
    first_sam = figure[HEADER + 64, 2 * (128 + 2) + 64]
    second_sam = figure[HEADER + 128 + 2 + 64, 2 * (128 + 2) + 64]
    assert (first_sam == HEAT_ANCHORS[0]).all() and (second_sam == HEAT_ANCHORS[-1]).all()  # the shared scale
    without_cam = attention_figure(labels, generated, {"sam": sam}, [[0, 0, 0]])
    assert without_cam.shape[1] < figure.shape[1] - 150


def test_sample_grid_enlarges_small_images_under_column_titles():
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    generated = torch.full((2, 3, 32, 32), 1.0)  # white
    real = torch.full((2, 3, 32, 32), -1.0)  # black
    grid = sample_grid(labels, generated, real, [[10, 20, 30]])
    assert grid.shape == (HEADER + 2 * 128 + 2, 3 * 128 + 2 * 2, 3)
    row = grid[HEADER : HEADER + 128]
    assert (row[:, :128] == [10, 20, 30]).all() and (row[:, 130:258] == 255).all() and (row[:, 260:] == 0).all()
