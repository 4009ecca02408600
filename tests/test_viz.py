import matplotlib

matplotlib.use("Agg")  # tests only; the package never picks a backend
import numpy as np  # noqa: E402
import torch  # noqa: E402

from companion import viz


def test_grouped_bars_draw_one_bar_per_group_and_strategy_and_per_group_references(tmp_path):
    fig = viz.grouped_bars({"a": {"grey": 0.5, "layer": 0.1}, "b": {"grey": 0.4, "layer": 0.2}}, "acc",
                           reference={"a": 0.25, "b": 0.1})
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 2) for p in ax.patches)
    assert heights == [0.1, 0.2, 0.4, 0.5]
    levels = sorted(round(float(seg[0][1]), 2) for c in ax.collections for seg in c.get_segments())
    assert levels == [0.1, 0.25]
    assert viz.save(fig, tmp_path, "bars") is None  # no Out[] in a notebook
    assert (tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG"


def test_image_grid_and_attribution_rows_have_a_panel_per_item():
    imgs = [torch.rand(3, 8, 8) for _ in range(3)]
    fig = viz.image_grid([imgs, imgs[:2]], row_titles=["x", "y"], col_titles=["1", "2", "3"])
    assert len(fig.axes) == 6 and not fig.axes[5].axison
    seg = torch.arange(4).repeat_interleave(2).view(1, 8).expand(8, 8)
    fig = viz.attribution_rows(torch.stack(imgs[:2]), {"grey": [torch.rand(4)] * 2, "layer": [torch.rand(4)] * 2},
                               [seg, seg], torch.rand(2, 1, 8, 8) > 0.5)
    assert len(fig.axes) == 2 * 3


def test_segment_heatmap_spreads_scores_over_segments():
    seg = torch.tensor([[0, 1], [1, 2]])
    assert np.array_equal(viz.segment_heatmap(torch.tensor([1.0, 2.0, 3.0]), seg), [[1, 2], [2, 3]])


def test_map_rows_share_a_colour_scale_per_column():
    fig = viz.map_rows({"a": [np.ones((2, 2)), np.zeros((2, 2))], "b": [2 * np.ones((2, 2)), np.ones((2, 2))]},
                       ["l1", "l2"])
    assert fig.axes[0].images[0].get_clim() == fig.axes[2].images[0].get_clim()


def test_curves_draw_one_line_per_series_with_its_colour():
    fig = viz.curves({"red": ([0, 1, 2], torch.tensor([3.0, 2.0, 1.0])), "blue": ([0, 1], [1, 2])}, "f", "power",
                     colours={"red": "red"}, logy=True)
    ax = fig.axes[0]
    assert [len(line.get_xdata()) for line in ax.lines] == [3, 2] and ax.get_yscale() == "log"
    assert ax.lines[0].get_color() == "red"


def test_moving_average_is_a_trailing_mean_of_the_same_length():
    assert viz.moving_average([1, 3, 5, 7], 2) == [1.0, 2.0, 4.0, 6.0]
    assert viz.moving_average([2, 4], 5) == [2.0, 3.0]


def test_scatter_draws_one_point_set_per_group():
    fig = viz.scatter({"a": ([1, 10, 100], torch.tensor([0.1, 0.2, 0.3])), "b": ([2], [0.5])}, "ppl", "score",
                      logx=True, colours={"a": "red"})
    ax = fig.axes[0]
    assert [len(c.get_offsets()) for c in ax.collections] == [3, 1] and ax.get_xscale() == "log"


def test_attention_distance_draws_a_dot_per_head_and_a_line_per_model():
    fig = viz.attention_distance({"MAE": torch.rand(4, 3), "LUT": torch.rand(4, 3)}, reference=0.5,
                                 colours={"LUT": "red"})
    ax = fig.axes[0]
    assert [len(c.get_offsets()) for c in ax.collections] == [12, 12]
    assert [len(line.get_xdata()) for line in ax.lines[:2]] == [4, 4] and ax.lines[1].get_color() == "red"
