"""Training from what users have (issue 12 items 7-9): partial labels (ignore_label, NaN pixels),
no val split (held-out fraction or block), --images/--masks, mixed bit depths, median weights."""

import json
import sys

import numpy as np
import pytest
import torch
from conftest import SHARED, TINY_TRAIN, make_dataset, write_png

from tomoseg.config.schema import load_config
from tomoseg.data.crops import extract_crop, sample_crops
from tomoseg.data.datamodule import prepare_training_data
from tomoseg.data.samples import Sample
from tomoseg.data.sources import IGNORE_INDEX, DataSource, training_mask
from tomoseg.data.statistics import class_counts, class_weights
from tomoseg.errors import TomosegError
from tomoseg.metrics.segmentation import bf1_binary, score_image
from tomoseg.training.trainer import train

TINY = {**TINY_TRAIN, "crops": 8}


def tiny_cfg(**kw):
    return load_config(None, {**TINY, **kw})


def sparse_dataset(root, ignore=255, cut=40, shape=(48, 56), n=None):
    """make_dataset, then the training masks' columns from ``cut`` on are unannotated."""
    from PIL import Image

    make_dataset(root, shape=shape, n=n)
    spec = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**spec, "ignore_label": ignore}))
    for f in (root / "train" / "masks").iterdir():
        m = np.asarray(Image.open(f)).copy()
        m[:, cut:] = ignore
        write_png(f, m)
    return root


# ----------------------------------------------------------------------------- loss, weights, crops


def test_loss_ignores_unannotated_pixels():
    from tomoseg.training.module import SegModule

    cfg = tiny_cfg(loss="ce")
    m = SegModule(cfg.model_dump(mode="json"), ["bg", "fg"], "fg", [0.5, 1.5])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    target = torch.randint(0, 2, (2, 8, 8), generator=g)
    ign = torch.zeros_like(target, dtype=torch.bool)
    ign[:, :, 5:] = True
    t1 = target.masked_fill(ign, IGNORE_INDEX)
    base = m.loss(logits, t1)
    # what lies under the ignored pixels (their logits, their hidden labels) changes nothing
    logits2 = torch.where(ign[:, None], torch.randn(2, 2, 8, 8, generator=g) * 9, logits)
    assert torch.equal(m.loss(logits2, t1), base)
    # and it is the weighted cross-entropy of the annotated pixels alone
    keep = ~ign
    lp = torch.log_softmax(logits, 1).permute(0, 2, 3, 1)[keep]
    tt = target[keep]
    w = torch.tensor([0.5, 1.5])[tt]
    ref = -(w * lp[torch.arange(len(tt)), tt]).sum() / w.sum()
    assert float(base) == pytest.approx(float(ref), rel=1e-6)
    # dice_ce: the same cross-entropy plus the batch soft Dice of the foreground over the
    # annotated pixels alone (nnU-Net's Dice, MONAI's DiceLoss with ignore_index)
    dice = SegModule(
        tiny_cfg(loss="dice_ce").model_dump(mode="json"), ["bg", "fg"], "fg", [0.5, 1.5]
    )
    d_base = dice.loss(logits, t1)
    assert torch.equal(dice.loss(logits2, t1), d_base)
    p_fg = torch.softmax(logits, 1)[:, 1][keep]
    y_fg = (target[keep] == 1).float()
    soft_dice = (2 * (p_fg * y_fg).sum() + 1e-5) / (p_fg.sum() + y_fg.sum() + 1e-5)
    assert float(d_base) == pytest.approx(float(ref + 1 - soft_dice), rel=1e-5)


def test_weights_and_counts_use_annotated_pixels_only(tmp_path):
    masks = [np.array([[0, 1, 255], [255, 255, 1]], np.uint8)]
    assert class_counts(masks, 2, ignore_label=255).tolist() == [1, 2]
    data = sparse_dataset(tmp_path / "d")
    prep = prepare_training_data(data, tiny_cfg(class_weights="inverse"))
    from PIL import Image

    ref = np.zeros(2, np.int64)
    for f in sorted((data / "train" / "masks").iterdir()):
        m = np.asarray(Image.open(f))
        ref += np.bincount(m[m != 255], minlength=2)
    assert prep.counts.tolist() == ref.tolist()
    assert prep.ignore_label == 255 and prep.annotated == pytest.approx(40 / 56)
    assert np.allclose(prep.weights, class_weights(ref, "inverse"))
    assert all((m[:, 40:] == IGNORE_INDEX).all() for m in prep.train_masks)
    # validation masks are whole (no ignored pixel there in this dataset)
    assert not any((m == IGNORE_INDEX).any() for m in prep.val_masks)


def test_crops_without_annotated_pixels_are_redrawn():
    shapes = [(64, 64), (64, 64)]
    ann = [np.zeros((64, 64), bool), np.zeros((64, 64), bool)]
    ann[0][:, :8] = True  # a thin annotated strip on image 0 only
    boxes = sample_crops(shapes, 16, 200, 0, annotated=ann)
    assert len(boxes) == 200
    assert all(extract_crop(ann[b.image], b).any() for b in boxes)
    assert {b.image for b in boxes} == {0}
    # everything annotated: exactly the plain draw
    full = [np.ones((64, 64), bool)] * 2
    assert sample_crops(shapes, 16, 50, 3, annotated=full) == sample_crops(shapes, 16, 50, 3)
    with pytest.raises(TomosegError, match="no annotated pixel"):
        sample_crops(shapes, 16, 5, 0, annotated=[np.zeros((64, 64), bool)] * 2)


def test_nan_pixels_are_ignored_in_training():
    img = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    img[:3, :] = np.nan
    img[5, 5] = np.inf
    mask = np.ones((20, 20), np.uint8)
    m = training_mask(Sample("a", img, mask), None)
    assert (m[:3] == IGNORE_INDEX).all() and m[5, 5] == IGNORE_INDEX
    assert (m[3:, :5] == 1).all()
    from tomoseg.data.datamodule import _finite, _normalized
    from tomoseg.data.normalization import fit_normalization

    norm = fit_normalization([_finite(img)])
    out = _normalized(img, norm)
    assert np.isfinite(out).all() and out.min() >= 0


# ----------------------------------------------------------------------------- scores


def test_prediction_differing_only_on_ignored_pixels_scores_one():
    import tomoseg

    rng = np.random.default_rng(1)
    truth = np.zeros((40, 40), np.uint8)
    truth[8:20, 5:30] = 1
    truth[25:35, 20:38] = 1
    pred = truth.copy()
    ign = np.zeros_like(truth, bool)
    ign[:, 15:25] = True  # a band crossing both objects
    truth_sparse = np.where(ign, 255, truth).astype(np.uint8)
    pred[ign] = rng.integers(0, 2, int(ign.sum()))  # anything at all under the band
    s = score_image(truth_sparse, pred, 2, 2.0, ignore_label=255)
    assert s.accuracy == 1.0 and s.iou.tolist() == [1.0, 1.0] and s.bf1.tolist() == [1.0, 1.0]
    assert s.cm.sum() == (~ign).sum()
    res = tomoseg.score(truth_sparse, pred, ignore_label=255)
    assert res["classes"] == ["0", "1"]
    assert res["mean"]["iou"] == {"0": 1.0, "1": 1.0} and res["mean"]["bf1"]["1"] == 1.0
    # without the ignore rule the band would count (and 255 is no class)
    with pytest.raises(TomosegError):
        score_image(truth_sparse, pred, 2, 2.0)
    with pytest.raises(TomosegError, match="is a class id"):
        score_image(truth_sparse, pred, 2, 2.0, ignore_label=1)
    # an error on annotated pixels still counts
    pred2 = pred.copy()
    pred2[10, 6] = 0
    assert score_image(truth_sparse, pred2, 2, 2.0, ignore_label=255).iou[1] < 1


def test_bf1_leaves_out_boundary_pixels_on_ignored_pixels():
    truth = np.zeros((30, 30), bool)
    truth[5:25, 5:25] = True
    pred = truth.copy()
    pred[5:25, 20:25] = False  # wrong edge, but only inside the ignored columns
    ign = np.zeros_like(truth)
    ign[:, 18:] = True
    assert bf1_binary(truth, pred, 2.0) < 1
    assert bf1_binary(truth & ~ign, pred, 2.0, ignore=ign) == 1.0
    # the same wrong edge on annotated pixels is seen
    ign2 = np.zeros_like(truth)
    ign2[:, :3] = True
    assert bf1_binary(truth, pred, 2.0, ignore=ign2) == pytest.approx(bf1_binary(truth, pred, 2.0))
    # a class present only on ignored pixels of the truth: NaN, as an absent class
    assert np.isnan(bf1_binary(np.zeros_like(truth), pred, 2.0, ignore=ign))


def test_score_cli_ignore_label(tmp_path, run_cli):
    truth = np.zeros((32, 32), np.uint8)
    truth[5:20, 5:20] = 1
    pred = truth.copy()
    truth[:, 24:] = 255
    pred[:, 24:] = 1
    write_png(tmp_path / "t" / "a.png", truth)
    write_png(tmp_path / "p" / "a.png", pred)
    code, _, e = run_cli(
        "score", "--pred", tmp_path / "p", "--truth", tmp_path / "t", "--out", tmp_path / "o",
        "--ignore-label", "255", "--classes", "bg,fg",
    )  # fmt: skip
    assert code == 0, e
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["mean"]["iou"] == {"bg": 1.0, "fg": 1.0} and m["mean"]["bf1"]["fg"] == 1.0


# ----------------------------------------------------------------------------- training runs


def test_sparse_labels_case_trains(tmp_path, one_thread):
    cases = SHARED.parent / "cases"
    if not (cases / "make_cases.py").is_file():
        pytest.skip(f"real-world cases {cases} are absent")
    sys.path.insert(0, str(cases))
    try:
        import make_cases
    finally:
        sys.path.remove(str(cases))
    make_cases.sparse_labels(tmp_path / "sparse-labels")
    data = tmp_path / "sparse-labels" / "data"
    run = train(data, tmp_path / "run", tiny_cfg(), progress=False)
    meta = json.loads((run / "run.json").read_text())
    assert meta["ignore_label"] == 255
    assert meta["annotated_fraction"] == pytest.approx(40 / 64)
    from PIL import Image

    ref = np.zeros(2, np.int64)
    for f in sorted((data / "train" / "masks").iterdir()):
        m = np.asarray(Image.open(f))
        ref += np.bincount(m[m != 255], minlength=2)[:2]
    assert meta["class_counts"] == ref.tolist()
    assert (run / "best.safetensors").is_file()


def test_no_val_split_holds_out_a_recorded_fraction(tmp_path, run_cli, one_thread):
    data = make_dataset(tmp_path / "d", shape=(48, 56), n={"train": 5, "test": 1})
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(TINY))
    args = ("train", "--data", data, "--config", cfg, "--quiet")
    code, _, e = run_cli(*args, "--out", tmp_path / "r", "--val-fraction", "0.4")
    assert code == 0, e
    v = json.loads((tmp_path / "r" / "run.json").read_text())["validation"]
    assert v["source"] == "held out of train" and v["val_fraction"] == 0.4
    assert len(v["images"]) == 2 and set(v["images"]) <= {f"s{i:02d}" for i in range(5)}
    # the choice is a function of the seed
    prep = prepare_training_data(data, tiny_cfg(val_fraction=0.4))
    assert prep.val_ids == v["images"] and len(prep.train_images) == 3
    # with a val split, that split is used and recorded
    prep = prepare_training_data(make_dataset(tmp_path / "v", shape=(48, 56)), tiny_cfg())
    assert prep.validation["images"] == ["s00"] and "val" in prep.validation["source"]


def test_single_image_holds_out_a_block(tmp_path):
    data = make_dataset(tmp_path / "d", shape=(50, 56), n={"train": 1})
    prep = prepare_training_data(data, tiny_cfg())
    assert prep.validation["block"] == {"image": "s00", "rows": [40, 50]}
    (m,) = prep.train_masks
    assert (m[40:] == IGNORE_INDEX).all() and (m[:40] != IGNORE_INDEX).all()
    assert prep.val_images[0].shape == (10, 56) and prep.val_masks[0].shape == (10, 56)
    assert prep.counts.sum() == 40 * 56
    for b in prep.boxes:  # no crop lies wholly inside the held-out block
        assert b.y < 40


def test_train_from_images_and_masks_folders(tmp_path, run_cli, one_thread):
    data = make_dataset(tmp_path / "d", shape=(48, 56), n={"train": 3})
    out = tmp_path / "r"
    code, o, e = run_cli(
        "train", "--images", data / "train" / "images", "--masks", data / "train" / "masks",
        "--out", out, "--classes", "bg,cell", "--crop-size", "32", "--crops", "8",
        "--epochs", "1", "--batch-size", "4", "--quiet",
    )  # fmt: skip
    assert code == 0, e
    meta = json.loads((out / "run.json").read_text())
    assert meta["classes"] == ["bg", "cell"] and meta["class_of_interest"] == "cell"
    assert meta["data"]["images"].endswith("images") and len(meta["validation"]["images"]) == 1
    # classes from the mask ids when not given
    src = DataSource.of(images=data / "train" / "images", masks=data / "train" / "masks")
    prep = prepare_training_data(src, tiny_cfg())
    assert prep.spec.classes == ["0", "1"]
    # the Python API
    import tomoseg

    run = tomoseg.train(
        images=data / "train" / "images",
        masks=data / "train" / "masks",
        out=tmp_path / "api",
        **{**TINY, "crops": 4},
    )
    assert run.metrics[0]["epoch"] == 1
    assert json.loads((run.path / "run.json").read_text())["classes"] == ["0", "1"]
    with pytest.raises(TomosegError, match="masks=DIR"):
        tomoseg.train(images=data / "train" / "images", out=tmp_path / "api2")


def test_bad_data_inputs(tmp_path, run_cli):
    from PIL import Image

    def err(*args):
        code, _, e = run_cli("train", "--out", tmp_path / "r", *args)
        lines = e.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error:"), e
        return lines[0]

    data = make_dataset(tmp_path / "d", shape=(48, 56))
    assert "--images" in err()
    assert "--masks" in err("--images", data / "train" / "images")
    assert "--classes" in err("--data", data, "--classes", "a,b")
    # an ignore label that is a class id
    bad = make_dataset(tmp_path / "b", shape=(48, 56))
    (bad / "dataset.json").write_text(json.dumps({"classes": ["bg", "fg"], "ignore_label": 1}))
    assert "is a class id" in err("--data", bad)
    assert "differs" in err("--data", sparse_dataset(tmp_path / "s"), "--ignore-label", "7")
    # 8- and 16-bit images in one training split
    mixed = make_dataset(tmp_path / "m", shape=(48, 56))
    f = mixed / "train" / "images" / "s01.png"
    Image.fromarray(np.asarray(Image.open(f)).astype(np.uint16) * 200).save(f.with_suffix(".tif"))
    f.unlink()
    line = err("--data", mixed)
    assert "mix bit depths" in line and "8-bit" in line and "16-bit" in line
    # median weights: the message speaks of median-frequency weights
    with pytest.raises(TomosegError, match="median-frequency weight") as exc:
        class_weights(np.array([10, 0]), "median", ["bg", "fg"])
    assert "inverse" not in str(exc.value)


def test_check_reports_annotated_fraction(tmp_path, run_cli):
    data = sparse_dataset(tmp_path / "d")
    code, out, e = run_cli("check", "--data", data)
    assert code == 0, e
    assert "71.4%" in out  # 40 of 56 columns annotated in every training image
    assert "annotated fraction per image [train]: s00 71.4%" in out
