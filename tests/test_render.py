import numpy as np
import pytest
import torch
from conftest import planted_hierarchy
from matplotlib import colormaps
from PIL import Image

from lightning_classim import analyze, plot_dendrogram, plot_matrix, render_heatmap, save_png


def lut(cmap="RdBu_r"):
    return (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def test_colour_lookup_by_hand():
    mat = np.array([[1.0, -1.0], [-1.0, 1.0]])
    img = render_heatmap(mat, min_pixels=2)
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8
    table = lut()
    assert (img[0, 0] == table[255]).all() and (img[0, 1] == table[0]).all()
    mid = render_heatmap(np.zeros((2, 2)), min_pixels=2)
    assert (mid[0, 0] == table[128]).all()


def test_order_permutes_rows_and_columns():
    mat = np.array([[1.0, 0.5, -0.5], [0.5, 1.0, 0.0], [-0.5, 0.0, 1.0]])
    order = [2, 0, 1]
    img = render_heatmap(mat, order, min_pixels=3)
    expected = render_heatmap(mat[np.ix_(order, order)], min_pixels=3)
    assert np.array_equal(img, expected)


def test_block_average_when_larger_than_the_pixel_budget():
    m = 100
    mat = np.random.default_rng(0).uniform(-1, 1, (m, m))
    mat = (mat + mat.T) / 2
    img = render_heatmap(mat, max_pixels=25)
    assert img.shape == (25, 25, 3)
    block = mat[:4, :4].mean()
    code = int(np.clip((block + 1) * 127.5 + 0.5, 0, 255))
    assert (img[0, 0] == lut()[code]).all()
    # a size that does not divide: 10 classes into at most 4 pixels -> blocks of 3, the last one partial
    img = render_heatmap(np.ones((10, 10)), max_pixels=16, min_pixels=1)
    assert img.shape == (10, 10, 3)
    small = render_heatmap(np.ones((40, 40)), max_pixels=16)
    assert small.shape == (14, 14, 3)


def test_block_average_in_a_given_order_matches_numpy():
    # 103 classes into at most 16 pixels: blocks of 7 along the order, the last one of 5
    m, factor = 103, 7
    rng = np.random.default_rng(1)
    mat = rng.uniform(-1, 1, (m, m))
    mat = (mat + mat.T) / 2
    order = rng.permutation(m)
    img = render_heatmap(mat, order, max_pixels=16)
    ordered = mat[np.ix_(order, order)]
    p = -(-m // factor)
    cut = [slice(a * factor, (a + 1) * factor) for a in range(p)]
    means = np.array([[ordered[ra, rb].mean() for rb in cut] for ra in cut])
    codes = np.clip((means + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    assert img.shape == (p, p, 3)
    assert np.array_equal(img, lut()[codes])
    # a NaN cell: its block averages its finite cells (the NaN-aware path), the other blocks are unchanged
    with_nan = mat.copy()
    with_nan[order[0], order[1]] = with_nan[order[1], order[0]] = np.nan
    img_nan = render_heatmap(with_nan, order, max_pixels=16)
    assert np.array_equal(img_nan[1:, 1:], img[1:, 1:])


def test_small_matrices_are_enlarged_by_whole_pixels():
    img = render_heatmap(np.eye(10), min_pixels=384)
    assert img.shape == (380, 380, 3)
    assert (img[:38, :38] == img[0, 0]).all()


def test_group_outlines_are_drawn_on_block_edges():
    mat = np.zeros((4, 4))
    img = render_heatmap(mat, groups=[0, 0, 1, 1], min_pixels=8, line_rgb=(1, 2, 3))  # 2 px per class
    line = np.all(img == (1, 2, 3), axis=-1)
    assert line[0, :4].all() and line[3, :4].all() and line[:4, 0].all() and line[:4, 3].all()
    assert line[4, 4:].all() and line[7, 4:].all()
    assert not line[1:3, 1:3].any()  # inside of the first block
    assert not line[0, 5]  # no line across the off-diagonal block


def test_two_levels_coarse_outlines_thick_and_fine_thin_in_a_lighter_shade():
    mat = np.zeros((8, 8))
    coarse, fine = [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 2, 2, 3, 3]
    img = render_heatmap(mat, groups=fine, coarse_groups=coarse, min_pixels=32, line_rgb=(0, 0, 0))  # 4 px a class
    dark = np.all(img == (0, 0, 0), axis=-1)
    light = np.all(img == (90, 90, 90), axis=-1)  # 45% of the way from the line colour to (200, 200, 200)
    assert dark[0:2, 0:16].all() and dark[14:16, 0:16].all() and dark[0:16, 0:2].all()  # coarse: 2 px wide
    assert dark[16:18, 16:32].all() and dark[30:32, 16:32].all()
    assert not dark[2, 4] and light[7, 2:7].all() and light[8, 9:14].all()  # the fine edge between classes 1 and 2
    assert not (dark | light)[4:6, 20:30].any()  # no line inside a fine block or across off-diagonal blocks
    plain = render_heatmap(mat, groups=fine, min_pixels=32, line_rgb=(0, 0, 0))  # one level: thin in line_rgb
    assert np.all(plain[7, 0:8] == 0) and not np.all(plain[1, 2:6] == 0)


def test_nan_cells_are_grey_and_torch_input_works():
    mat = torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]])
    img = render_heatmap(mat, min_pixels=2)
    assert (img[0, 1] == (200, 200, 200)).all()


def test_any_square_matrix_in_the_similarity_order(rng):
    scores, _top, _ = planted_hierarchy(rng)
    sim = np.corrcoef(scores, rowvar=False)
    res = analyze(sim)
    confusion = rng.integers(0, 50, (45, 45)).astype(float)
    img = render_heatmap(confusion, res.order, res.groups, vmin=0, vmax=50, cmap="magma")
    assert img.shape[0] == img.shape[1] == 45 * (384 // 45)
    # integer counts (a confusion matrix as it comes), no outlines: each cell is the colour of its count, permuted
    counts = rng.integers(0, 51, (45, 45))
    img = render_heatmap(counts, res.order, vmin=0, vmax=50, cmap="magma", min_pixels=45)
    expected = lut("magma")[np.floor(counts[np.ix_(res.order, res.order)] * 255 / 50 + 0.5).astype(int)]
    assert np.array_equal(img, expected)


def test_png_of_a_planted_hierarchy_decodes_and_shows_blocks(tmp_path, rng):
    scores, _top, _ = planted_hierarchy(rng)
    sim = np.corrcoef(scores, rowvar=False)
    res = analyze(sim)
    path = save_png(render_heatmap(sim, res.order, res.groups, min_pixels=45), tmp_path / "heat.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (45, 45, 3)
    # within a block the colour is the dark red end (similarity ~0.7+), across blocks it is near white
    table = lut().astype(int)
    inside = img[5, 7].astype(int)
    across = img[5, 40].astype(int)
    assert np.abs(inside - table[220]).sum() < np.abs(inside - table[128]).sum()
    assert np.abs(across - table[128]).sum() < 40


def test_labelled_figure_and_dendrogram(tmp_path, rng):
    scores, _top, _ = planted_hierarchy(rng)
    sim = np.corrcoef(scores, rowvar=False)
    res = analyze(sim)
    names = [f"class {i}" for i in range(45)]
    fig = plot_matrix(sim, res.order, res.groups, class_names=names, title="planted")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [names[i] for i in res.order]
    assert len(ax.patches) == res.n_groups
    fig.savefig(tmp_path / "fig.png")
    dend = plot_dendrogram(res.linkage, res.order, class_names=names)
    assert len(dend.axes[0].collections[0].get_segments()) == 44
    dend.savefig(tmp_path / "dend.png")
    assert Image.open(tmp_path / "fig.png").size[0] > 300
    # past max_labels the names are dropped rather than drawn over each other
    fig = plot_matrix(sim, res.order, class_names=names, max_labels=20)
    assert fig.axes[0].get_xticklabels() == [] and fig.axes[0].get_yticklabels() == []
    dend = plot_dendrogram(res.linkage, class_names=names, max_labels=20, title="tree")
    assert dend.axes[0].get_xticklabels() == [] and dend.axes[0].get_title() == "tree"


def test_dendrogram_of_a_deep_chain_does_not_recurse():
    from scipy.cluster.hierarchy import linkage

    z = linkage(np.arange(3000.0)[:, None] ** 1.5, "single")  # a 2999-deep tree
    fig = plot_dendrogram(z)
    assert len(fig.axes[0].collections[0].get_segments()) == 2999


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"matrix": np.ones((2, 3))}, r"`matrix` to be a square \(m, m\) matrix, but got shape \(2, 3\)"),
        ({"order": [0, 0, 1]}, r"`order` to be a permutation of range\(3\)"),
        ({"groups": [0, 1]}, r"`groups` to give one label per class \(3\), but got shape \(2,\)"),
        ({"coarse_groups": [0, 1, 1, 1]}, r"`coarse_groups` to give one label per class \(3\), but got shape \(4,\)"),
        ({"vmin": 1.0, "vmax": 1.0}, r"`vmax` > `vmin`, but got vmin=1.0 and vmax=1.0"),
        ({"max_pixels": 8}, r"`max_pixels` to be an int of at least 16, but got 8"),
        ({"cmap": "nope"}, r"`cmap` to be a matplotlib colormap name, but got 'nope'"),
    ],
)
def test_render_errors(kwargs, pattern):
    args = {"matrix": np.eye(3), **kwargs}
    with pytest.raises(ValueError, match=pattern):
        render_heatmap(**args)


def test_plot_matrix_wrong_names():
    with pytest.raises(ValueError, match=r"`class_names` to name all 3 classes, but got 2 names"):
        plot_matrix(np.eye(3), class_names=["a", "b"])


def test_labelled_picture_holds_the_heatmap_names_a_colour_bar_and_a_title():
    from conftest import assert_heatmap_inside

    from lightning_classim.picture import labelled_heatmap
    from lightning_classim.render import colormap_lut

    rng = np.random.default_rng(0)
    x = np.repeat(rng.standard_normal((800, 4)), 3, axis=1) + rng.standard_normal((800, 12))
    sim = np.corrcoef(x, rowvar=False)
    res = analyze(sim, class_names=[f"class {i}" for i in range(12)])
    plain = labelled_heatmap(sim, res.order, res.groups, class_names=res.class_names)
    pic = labelled_heatmap(sim, res.order, res.groups, class_names=res.class_names, title="classim, epoch 3")
    left, top, right, bottom = pic.box
    assert_heatmap_inside(pic.image, pic.box, sim, res.order, res.groups)
    assert right - left == 384 // 12 * 12  # at least 10 pixels a class, for the names
    dark = pic.image.min(axis=2) < 100
    assert dark[top:bottom, : left - 2].sum() > 200  # names along the side
    assert dark[: top - 2, left:right].sum() > 200  # and along the top
    assert dark[:top, :].sum() > plain.image.shape[0] and plain.box[1] < top  # the title line
    # the colour bar: the colormap from its last colour (top) to its first (bottom), then its range written
    bar = pic.image[top:bottom, right + 12]
    lut = colormap_lut("RdBu_r")
    assert np.abs(bar[0].astype(int) - lut[-1]).max() <= 1 and np.abs(bar[-1].astype(int) - lut[0]).max() <= 1
    assert dark[top:bottom, right + 30 :].any()


def test_labelled_picture_of_many_classes_names_the_groups():
    from lightning_classim.picture import labelled_heatmap

    rng = np.random.default_rng(1)
    x = np.repeat(rng.standard_normal((600, 5)), 40, axis=1) + 2 * rng.standard_normal((600, 200))
    sim = np.corrcoef(x, rowvar=False)
    res = analyze(sim, n_groups=5)
    pic = labelled_heatmap(sim, res.order, res.groups, title="t")
    left, top, right, bottom = pic.box
    assert right - left == 200 * (384 // 200)  # no names: the heatmap keeps its usual size
    dark = pic.image.min(axis=2) < 100
    rows = np.nonzero(dark[top:bottom, : left - 2].any(axis=1))[0]
    assert rows.size and np.diff(rows).max() > 20  # one label per group, not one per class
    with pytest.raises(ValueError, match=r"`class_names` to name all 200 classes, but got 3 names"):
        labelled_heatmap(sim, class_names=["a", "b", "c"])
