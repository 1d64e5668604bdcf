"""The pictures a user reads: report panels (titles, legend, area downsampling), saved masks
that look like masks and read back as class ids, training curves on fixed axes."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from tomoseg.io.images import read_image, read_mask
from tomoseg.io.writers import mask_palette, write_mask, write_mask_rows
from tomoseg.reporting.figures import best_epoch, curves_figure
from tomoseg.reporting.scores import (
    FN_COLOUR,
    FP_COLOUR,
    LEGEND,
    TP_COLOUR,
    panel,
    panel_figure,
    panel_tiles,
    reduce_by_area,
)


def _texts(fig):
    return {t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))}


def test_panel_has_a_title_per_column_and_the_overlay_legend():
    truth = np.zeros((60, 80), np.uint8)
    truth[10:30, 10:40] = 1
    pred = np.roll(truth, 5, axis=1)
    image = np.random.default_rng(0).random((60, 80)).astype(np.float32)
    fig = panel_figure(truth, pred, 1, ["background", "soma"], image, title="z0003")
    texts = _texts(fig)
    for title in ("image", "truth", "prediction", "overlay of soma", "overlay on image", "z0003"):
        assert title in texts
    for _, words in LEGEND:
        assert words in texts
    # the legend's patches carry the overlay's colours
    (legend,) = fig.legends
    got = [tuple(np.round(np.array(h.get_facecolor()[:3]) * 255)) for h in legend.legend_handles]
    assert got == [tuple(float(v) for v in c) for c, _ in LEGEND]
    rgb = panel(truth, pred, 1, ["background", "soma"], image)
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    # a legend band under the columns: pink and green swatches drawn there
    bottom = rgb[-30:]
    assert (bottom == FN_COLOUR).all(-1).any() and (bottom == FP_COLOUR).all(-1).any()


def test_overlay_on_image_colours_only_the_class_pixels():
    truth = np.zeros((40, 40), np.uint8)
    truth[5:15, 5:15] = 1
    pred = np.zeros_like(truth)
    pred[25:35, 25:35] = 1
    image = np.full((40, 40), 100, np.uint8)
    image[0, 0] = 0
    tiles = panel_tiles(truth, pred, 1, 2, image)
    on = tiles["overlay on image"].astype(int)
    # missed pixels tinted pink, extra green, the rest the (dimmed) image, unchanged in hue
    assert on[10, 10, 0] > on[10, 10, 1] and on[30, 30, 1] > on[30, 30, 0]
    assert on[20, 20, 0] == on[20, 20, 1] == on[20, 20, 2]


def test_thin_prediction_survives_downsampling_by_area():
    """A one-pixel-wide line (a dendrite, 0.03 % of the slice) stays in the panel: taking every
    5th pixel, as panels did, misses it entirely."""
    h, w = 200, 4000  # 3 columns of 4000 px into 2400: a factor of 5
    truth = np.zeros((h, w), np.uint8)
    pred = np.zeros((h, w), np.uint8)
    pred[:, 1] = 1  # a false positive line
    truth[:, 2001] = 1  # a missed line
    assert not pred[::5, ::5].any() and not truth[::5, ::5].any()  # pixel skipping: gone
    tiles = panel_tiles(truth, pred, 1, 2)
    assert tiles["prediction"].shape == (40, 800, 3)
    assert (tiles["prediction"][:, 0] == TP_COLOUR).all()
    assert (tiles["truth"][:, 400] == TP_COLOUR).all()
    ov = tiles["overlay of 1"]
    assert (ov[:, 0] == FP_COLOUR).all() and (ov[:, 400] == FN_COLOUR).all()
    assert (ov[:, 5:395] == 0).all()  # and no more than one block wide


def test_reduce_by_area_averages_the_image_and_the_kept_pixels():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, 0] = 200
    rgb[:, 2:4] = 100
    out, touched = reduce_by_area(rgb, 2)
    assert touched is None and out.shape == (2, 3, 3)
    assert out[0, 0, 0] == 50 and out[0, 1, 0] == 100  # means of 2x2 blocks
    keep = np.zeros((4, 6), bool)
    keep[0, 0] = True
    out, touched = reduce_by_area(rgb, 2, keep)
    assert out[0, 0, 0] == 200 and touched.sum() == 1  # the block shows its kept pixel
    odd, _ = reduce_by_area(np.full((5, 5, 3), 90, np.uint8), 2)
    assert odd.shape == (3, 3, 3) and (odd == 90).all()  # edge blocks: mean of what they hold


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_saved_mask_is_indexed_and_reads_back_as_class_ids(tmp_path, suffix):
    mask = np.zeros((30, 50), np.uint8)
    mask[5:20, 5:30] = 1
    mask[22:28] = 2
    mask[0, 0] = 255
    path = write_mask(tmp_path / f"m{suffix}", mask)
    with Image.open(path) as im:
        assert im.mode == "P"  # shown with its palette: 1 white, 2 a colour
        shown = np.asarray(im.convert("RGB"))
        assert np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)[1].tolist() == [255] * 3
    assert (shown[mask == 1] == 255).all() and (shown[mask == 0] == 0).all()
    assert (shown[mask == 2] == mask_palette()[2]).all()
    for read in (read_mask, read_image, lambda p: np.asarray(Image.open(p))):
        np.testing.assert_array_equal(read(path), mask)
    if suffix == ".tif":
        np.testing.assert_array_equal(tifffile.imread(path), mask)
    rows = write_mask_rows(
        tmp_path / f"r{suffix}", mask.shape, [(0, 10, mask[:10]), (10, 30, mask[10:])], 8
    )
    np.testing.assert_array_equal(read_mask(rows), mask)
    assert Image.open(rows).mode == "P"


def test_mask_with_large_ids_stays_plain_uint16(tmp_path):
    mask = np.arange(600, dtype=np.uint16).reshape(20, 30)
    np.testing.assert_array_equal(read_mask(write_mask(tmp_path / "big.png", mask)), mask)


def _history():
    val = [0.2, 0.5, 0.7, 0.7, 0.6]
    return [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "train_accuracy": 0.95,
         "val_accuracy": 0.94, "train_iou_soma": 0.1 * e, "val_iou_soma": v,
         "val_bf1_soma": 0.3, "seconds": 2.0}
        for e, v in enumerate(val, 1)
    ]  # fmt: skip


def test_curves_scores_on_fixed_axes_with_the_best_epoch_marked():
    import matplotlib.pyplot as plt

    h = _history()
    assert best_epoch(h, "val_iou_soma") == 3  # the first of the equal best, as ModelCheckpoint
    fig = curves_figure(h, "soma")
    try:
        by_title = {ax.get_title(): ax for ax in fig.axes}
        for title in ("global accuracy", "IoU soma", "BF1 soma (val, full images)"):
            assert by_title[title].get_ylim() == (0.0, 1.0)
        for ax in fig.axes:
            marks = [ln for ln in ax.lines if ln.get_label() == "best (epoch 3)"]
            assert len(marks) == 1 and list(marks[0].get_xdata()) == [3, 3]
    finally:
        plt.close(fig)


def test_curves_without_validation_iou_mark_nothing():
    import matplotlib.pyplot as plt

    h = [
        {"epoch": 1, "train_loss": 1.0},
        {"epoch": 2, "train_loss": 0.5, "val_iou_soma": float("nan")},
    ]
    assert best_epoch(h, "val_iou_soma") is None
    fig = curves_figure(h, "soma")
    assert not any("best" in ln.get_label() for ax in fig.axes for ln in ax.lines)
    plt.close(fig)
