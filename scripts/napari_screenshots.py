"""Pictures of the tomoseg napari widgets in use on the phantom, for docs/napari.md.

    QT_QPA_PLATFORM=offscreen PYTHONPATH=src python scripts/napari_screenshots.py docs/napari \
        [--run RUN] [--work /tmp/napari_shots]

Drives the widgets as a user does (segment the stack with an under-trained run, rank the
slices to label next, correct two of them from the truth, fine-tune, measure the objects) and
writes one PNG per step: the viewer's canvas (``viewer.screenshot``) beside the widget. Where
OpenGL is missing (a headless machine without a display), the canvas is drawn from the same
layers with napari's own colormaps (image grey, labels, uncertainty) instead: the picture says
which it is in its file name's log line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def wait(widget) -> None:
    """Run the Qt event loop until the widget's job has finished."""
    from qtpy.QtWidgets import QApplication

    while widget.job.running:
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()
    if widget.job.last_error:
        sys.exit(f"error: {widget.job.last_error}")


def composite(viewer, z: int) -> np.ndarray:
    """The visible layers at slice ``z`` drawn with their colormaps (RGB uint8)."""
    from napari.layers import Image, Labels, Points

    rgb = None
    for layer in viewer.layers:
        if not layer.visible or isinstance(layer, Points):
            continue
        data = np.asarray(layer.data[z] if layer.ndim == 3 else layer.data, np.float32)
        if isinstance(layer, Image):
            lo, hi = layer.contrast_limits
            rgba = layer.colormap.map(np.clip((data - lo) / max(hi - lo, 1e-9), 0, 1).ravel())
            rgba = rgba.reshape(*data.shape, 4)
        elif isinstance(layer, Labels):
            rgba = np.asarray(layer.colormap.map(data.astype(np.int64).ravel()))
            rgba = rgba.reshape(*data.shape, 4) * layer.opacity
        else:
            continue
        alpha = rgba[..., 3:4] if rgb is not None else 1.0
        if rgb is None:
            rgb = rgba[..., :3]
        elif isinstance(layer, Image) and layer.blending == "additive":
            rgb = np.clip(rgb + rgba[..., :3] * layer.opacity, 0, 1)
        else:
            rgb = rgb * (1 - alpha) + rgba[..., :3] * alpha
    assert rgb is not None
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def canvas(viewer, z: int, gl: bool, only: list[str] | None = None):
    """The canvas at slice ``z`` (``only``: with just these layers visible) as a PIL image."""
    from PIL import Image as PILImage

    shown = {layer.name: layer.visible for layer in viewer.layers}
    if only is not None:
        for layer in viewer.layers:
            layer.visible = layer.name in only
    try:
        if gl:
            viewer.dims.set_current_step(0, z)
            return PILImage.fromarray(viewer.screenshot(canvas_only=True)[..., :3])
        return PILImage.fromarray(composite(viewer, z)).resize((512, 512), PILImage.NEAREST)
    finally:
        for layer in viewer.layers:
            layer.visible = shown[layer.name]


def shot(viewer, widget, z: int, path: Path, gl: bool, also: list[str] | None = None) -> None:
    """The canvas at slice ``z`` (and a second one with only the layers ``also``) beside the
    widget, as one PNG."""
    from PIL import Image as PILImage
    from qtpy.QtCore import QBuffer, QIODevice

    first = canvas(viewer, z, gl)
    if also:
        second = canvas(viewer, z, gl, also)
        both = PILImage.new("RGB", (first.width + second.width + 8, first.height), (38, 41, 48))
        both.paste(first, (0, 0))
        both.paste(second, (first.width + 8, 0))
        first = both
    canvas_img = first
    native = widget.native
    native.resize(max(native.sizeHint().width(), 420), max(native.sizeHint().height(), 512))
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.ReadWrite)
    native.grab().save(buf, "PNG")
    import io

    panel = PILImage.open(io.BytesIO(bytes(buf.data()))).convert("RGB")
    h = max(canvas_img.height, panel.height)
    out = PILImage.new("RGB", (canvas_img.width + panel.width, h), (38, 41, 48))
    out.paste(canvas_img, (0, 0))
    out.paste(panel, (canvas_img.width, 0))
    out.save(path)
    print(f"{path}: slice {z}, canvas by {'viewer.screenshot' if gl else 'layer colormaps'}")


def phantom(work: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    from tomoseg.experiments.demo import DEMO_SHAPE, DEMO_SLICES
    from tomoseg.io.images import read_image, read_mask
    from tomoseg.synthetic.phantom import generate_phantom

    data = work / "phantom"
    if not (data / "dataset.json").is_file():
        generate_phantom(data, DEMO_SHAPE, DEMO_SLICES, seed=0, overwrite=True)
    files = sorted((data).glob("*/images/*.tif"), key=lambda f: f.stem)
    vol = np.stack([read_image(f) for f in files])
    truth = np.stack([read_mask(f.parents[1] / "masks" / f"{f.stem}.png") for f in files])
    return vol, truth, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--run", type=Path, default=None, help="default: train an under-trained one")
    ap.add_argument("--work", type=Path, default=Path("/tmp/napari_shots"))
    ap.add_argument("--budget", type=float, default=2.0, help="fine-tune minutes")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    import tomoseg

    vol, truth, data = phantom(a.work)
    run = a.run
    if run is None:
        run = a.work / "run"
        if not (run / "last.safetensors").is_file():
            tomoseg.train(data, run, width=16, depth=4, crop_size=128, crops=64, epochs=2,
                          device="cpu", overwrite=True)  # fmt: skip
    import napari
    from napari._qt.qt_event_loop import get_qapp

    from tomoseg.napari import widgets as W

    get_qapp()
    try:
        viewer = napari.Viewer(show=False)
        viewer.add_image(np.zeros((2, 4, 4)))
        viewer.layers.clear()
        gl = True
    except Exception:  # no OpenGL here: the layers are drawn from their colormaps
        from napari.components import ViewerModel

        viewer, gl = ViewerModel(), False
    viewer.add_image(vol, name="phantom")

    seg = W.SegmentWidget(viewer)
    seg.run.value, seg.image.value = str(run), viewer.layers["phantom"]
    seg.segment()
    wait(seg)
    unc = viewer.layers["phantom uncertainty"]
    unc.visible, unc.blending, unc.opacity = False, "translucent", 1.0
    # left: the labels over the image; right: the uncertainty (magma, 0 black to 1 white)
    shot(viewer, seg, 17, a.out / "segment.png", gl, also=["phantom uncertainty"])

    nxt = W.NextSlicesWidget(viewer)
    nxt.run.value, nxt.image.value, nxt.n.value = str(run), viewer.layers["phantom"], 3
    nxt.rank()
    wait(nxt)
    nxt.go_next()
    shot(viewer, nxt, nxt.slices[0], a.out / "next_slices.png", gl)

    labels = viewer.layers["phantom labels"]
    fixed = np.array(labels.data)
    corrected = nxt.slices[:2]
    fixed[corrected] = truth[corrected]  # the user corrects the two suggested slices
    labels.data = fixed
    ft = W.FineTuneWidget(viewer)
    ft.image.value, ft.corrected.value = viewer.layers["phantom"], labels
    ft.out.value = str(a.work / "run-ft")
    ft.minutes.value = a.budget
    ft.train_options = {"overwrite": True, "device": "cpu"}
    ft.fine_tune()
    wait(ft)
    labels.visible = False
    shot(viewer, ft, 17, a.out / "fine_tune.png", gl)

    obj = W.ObjectsWidget(viewer)
    obj.layer.value = viewer.layers["phantom labels run-ft"]
    obj.measure()
    wait(obj)
    shot(viewer, obj, 10, a.out / "objects.png", gl)

    # a stack too big for memory: the whole volume through segment-stack into an OME-Zarr
    # folder, shown lazily (the labels read from disk slice by slice)
    for name in ("phantom labels", "phantom uncertainty"):
        viewer.layers[name].visible = True
    viewer.layers["phantom labels run-ft"].visible = False
    seg.scope.value = W.SCOPES[2]
    seg.output.value = str(a.work / "seg-disk")
    seg.overwrite.value = True
    seg.segment()
    wait(seg)
    unc = viewer.layers["phantom uncertainty"]
    unc.visible, unc.blending, unc.opacity = False, "translucent", 1.0
    shot(viewer, seg, 17, a.out / "segment_disk.png", gl, also=["phantom uncertainty"])


if __name__ == "__main__":
    main()
