"""The tomoseg widgets: Segment, Correct and fine-tune, Train from layers, Objects, Next slices.

Each is thin over the library: it reads its layers, checks them against the run before
starting (a 2D layer, a stack of the wrong shape: one line), and runs the library in a worker
(:class:`~tomoseg.napari.jobs.Job`: progress, ETA, Cancel, errors as notifications).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    PushButton,
    Select,
    SpinBox,
    Table,
)
from napari.layers import Image, Labels

from tomoseg.errors import TomosegError
from tomoseg.utils.format import plural

#: the value a fine-tune's and a training's label arrays give unannotated pixels
IGNORE = 255


# ----------------------------------------------------------------------------- library work
@dataclass
class Segmentation:
    """What :func:`segment_volume` computed: the slices done and their maps (Z, H, W)."""

    run: Path
    slices: list[int]
    labels: np.ndarray
    probability: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)
    class_of_interest: str = ""


def as_volume(data: Any, what: str = "image layer") -> Any:
    """A layer's data as (Z, Y, X) (a 2D layer is one slice), lazily when it is lazy.

    Raises:
        TomosegError: not 2D or 3D (RGB, channels, time: choose one plane first).
    """
    shape = tuple(data.shape)
    if len(shape) == 2:
        return data[None]
    if len(shape) != 3:
        raise TomosegError(
            f"{what} has shape {shape}: tomoseg segments (Y, X) slices or (Z, Y, X) stacks"
        )
    return data


def segment_volume(
    run: Path,
    volume: Any,
    slices: list[int],
    *,
    tta: str | None = None,
    probability: bool = False,
    uncertainty: bool = False,
    progress: Any = None,
    cancel: Any = None,
) -> Segmentation:
    """Segment ``slices`` of a (Z, Y, X) volume with a run, one slice at a time
    (:meth:`~tomoseg.Predictor.segment`, each slice with its 2.5D context when the run has one);
    the class of interest's probability and the uncertainty (normalised entropy,
    :func:`~tomoseg.inference.predictor.uncertainty_of`) when asked.

    Raises:
        TomosegError: as :meth:`~tomoseg.Predictor.from_run` and :meth:`~tomoseg.Predictor.predict`;
        Cancelled: ``cancel`` set (between slices).
    """
    from tomoseg.data.context import context_reader
    from tomoseg.inference.predictor import Predictor, as_image, uncertainty_of
    from tomoseg.utils.progress import job_progress

    p = Predictor.from_run(run, tta=tta)
    job = job_progress("segment", "slice", len(slices), progress, cancel)
    job.start()
    z_all, h, w = volume.shape
    labels = np.zeros((len(slices), h, w), np.uint8)
    prob = np.zeros((len(slices), h, w), np.float32) if probability else None
    unc = np.zeros((len(slices), h, w), np.float32) if uncertainty else None
    read = context_reader(lambda z: np.asarray(volume[z]), z_all, p.context)
    for i, z in enumerate(slices):
        job.check()
        image = as_image(read(z), name=f"slice {z}", context=p.context)
        lab, pr = p.segment(image, probabilities=probability or uncertainty, names=[f"slice {z}"])
        labels[i] = lab
        if prob is not None and pr is not None:
            prob[i] = pr[p.classes.index(p.class_of_interest)]
        if unc is not None and pr is not None:
            unc[i] = uncertainty_of(pr)
        job.advance(message=f"slice {z}")
    job.end()
    return Segmentation(run, slices, labels, prob, unc, p.classes, p.class_of_interest)


#: the Segment widget's choices of what to segment
SCOPES = ("shown slice", "whole volume", "whole volume to disk (big stacks)")


def default_stack_folder(image_name: str, run: Path, tta: str | None, volume: Any) -> Path:
    """Where the Segment widget writes a whole volume to disk when no folder is chosen:
    ``<temporary folder>/tomoseg-napari/<image>-<key>``, the key a hash of the run's weights
    file (path, size, time), the TTA and the array's fingerprint (shape, dtype, three slices:
    :func:`~tomoseg.io.sources.array.fingerprint`), so that the same job finds its own
    output again (a cancelled job resumes) and another never meets it."""
    import hashlib
    import re
    import tempfile

    from tomoseg.io.sources.array import fingerprint

    weights = [run / n for n in ("best.safetensors", "last.safetensors") if (run / n).is_file()]
    stamp = [(str(w.resolve()), w.stat().st_size, w.stat().st_mtime_ns) for w in weights]
    key = hashlib.sha256(repr((stamp, str(run.resolve()), tta, fingerprint(volume))).encode())
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", image_name)[:40] or "image"
    return Path(tempfile.gettempdir()) / "tomoseg-napari" / f"{name}-{key.hexdigest()[:12]}"


def segment_to_disk(
    run: Path,
    volume: Any,
    out: Path,
    *,
    tta: str | None = None,
    uncertainty: bool = False,
    overwrite: bool = False,
    progress: Any = None,
    cancel: Any = None,
) -> dict[str, Any]:
    """Segment every slice of a (Z, Y, X) array (numpy, or dask: read one slice at a time)
    into an OME-Zarr label volume in ``out`` with :func:`tomoseg.segment_stack` (and its
    uncertainty, when asked): memory stays bounded by a few slices, a cancelled job keeps its
    finished slices and the same call resumes it.

    Returns:
        :func:`~tomoseg.segment_stack`'s summary.

    Raises:
        TomosegError: as :func:`~tomoseg.segment_stack` (an output of another job without
            ``overwrite``); Cancelled: ``cancel`` set (between slices).
    """
    from tomoseg.inference.predictor import Predictor
    from tomoseg.inference.stack import segment_stack

    predictor = Predictor.from_run(run, tta=tta)
    return segment_stack(
        predictor, volume, out, uncertainty=uncertainty, overwrite=overwrite,
        progress=progress, cancel=cancel,
    )  # fmt: skip


def edited_slices(
    labels: np.ndarray, original: np.ndarray | None, *, whole: bool = True
) -> dict[int, np.ndarray]:
    """The annotations of a Labels layer, per slice that has any.

    With ``original`` (the segmentation the layer started from), a slice the user changed is
    annotated: everywhere (``whole``: the user reviewed the slice, so what was left is
    accepted) or only where changed (the rest :data:`IGNORE`). Without ``original`` the layer
    is an annotation layer (napari's 0 = not annotated, ``k`` = class ``k - 1``).
    Slices the user did not touch are left out.
    """
    vol = np.asarray(labels)
    vol = vol[None] if vol.ndim == 2 else vol
    out = {}
    for z in range(vol.shape[0]):
        s = vol[z]
        if original is not None:  # numpy, or lazy (a to-disk segmentation): one slice read
            touched = s != np.asarray(original[z])
            lab = s if whole else np.where(touched, s, IGNORE)
        else:
            touched = s > 0
            lab = np.where(touched, s.astype(np.int64) - 1, IGNORE)
        if touched.any():
            out[z] = lab.astype(np.uint8 if IGNORE < 256 else np.uint16)
    return out


# ----------------------------------------------------------------------------- widgets
def _layers(viewer: napari.Viewer, kind: type) -> Any:
    def choices(_: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]

    return choices


class _Widget(Container):
    """A widget with a viewer, layer choices kept up to date and a :class:`Job`."""

    def __init__(self, viewer: napari.Viewer, widgets: list[Any]) -> None:
        from tomoseg.napari.jobs import Job

        self.viewer = viewer
        self.job = Job()
        super().__init__(widgets=[*widgets, self.job])
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()

    def _current_z(self, volume: Any) -> int:
        """The slice shown (the first axis of a 3D layer)."""
        step = self.viewer.dims.current_step
        return int(min(step[-3] if len(step) >= 3 else 0, volume.shape[0] - 1))

    def _show(self, data: np.ndarray, kind: str, name: str, **kwargs: Any) -> Any:
        """Add a layer, or replace the data of the layer of that name."""
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if layer.data.shape == data.shape:
                layer.data = data
                return layer
            self.viewer.layers.remove(name)
        add = self.viewer.add_labels if kind == "labels" else self.viewer.add_image
        return add(data, name=name, **kwargs)


class SegmentWidget(_Widget):
    """Segment the current image layer with a run: the slice shown or the whole volume (in
    memory), or the whole volume to disk (:func:`segment_to_disk`: an OME-Zarr label volume
    in the ``output`` folder, by default a folder of its own in the temporary folder, shown
    lazily; a cancelled job resumes when run again; for stacks too big for memory).

    The labels go to a Labels layer ``<image> labels`` (at the image's scale) that remembers
    the segmentation it shows, so edits made on it are the corrections the fine-tune widget
    trains on; optionally the class of interest's probability and the uncertainty as Image
    layers.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self.run = FileEdit(mode="d", label="run")
        self.image = ComboBox(label="image", choices=_layers(napari_viewer, Image))
        self.scope = ComboBox(label="segment", choices=list(SCOPES))
        self.scope.value = "whole volume"
        self.output = FileEdit(mode="d", label="output (to disk)", value="")
        self.overwrite = CheckBox(text="overwrite the output", value=False)
        self.tta = ComboBox(label="TTA", choices=["run's", "none", "flips", "all"])
        self.probability = CheckBox(text="probability layer", value=False)
        self.uncertainty = CheckBox(text="uncertainty layer", value=True)
        self.button = PushButton(text="Segment")
        super().__init__(
            napari_viewer,
            [
                self.run,
                self.image,
                self.scope,
                self.output,
                self.overwrite,
                self.tta,
                self.probability,
                self.uncertainty,
                self.button,
            ],
        )
        self.button.changed.connect(self.segment)

    def segment(self) -> Any:
        """Start the segmentation (the button)."""
        layer = self.image.value
        try:
            if layer is None:
                raise TomosegError("image: open or choose an image layer first")
            if getattr(layer, "rgb", False):
                raise TomosegError(f"image layer {layer.name!r} is RGB: tomoseg reads grayscale")
            volume = as_volume(layer.data, f"image layer {layer.name!r}")
        except TomosegError as exc:
            self.job.fail(exc)
            return None
        run = Path(self.run.value)
        tta = None if self.tta.value == "run's" else self.tta.value
        if self.scope.value == SCOPES[2]:
            return self._segment_to_disk(layer, volume, run, tta)
        whole = self.scope.value == "whole volume"
        slices = list(range(volume.shape[0])) if whole else [self._current_z(volume)]

        def work(progress: Any, cancel: Any) -> Segmentation:
            return segment_volume(
                run,
                volume,
                slices,
                tta=tta,
                probability=self.probability.value,
                uncertainty=self.uncertainty.value,
                progress=progress,
                cancel=cancel,
            )

        return self.job.start(work, lambda result: self._done(layer, volume, result))

    def _segment_to_disk(self, layer: Image, volume: Any, run: Path, tta: str | None) -> Any:
        """The whole volume through :func:`segment_to_disk` into the chosen folder (default
        :func:`default_stack_folder`), shown lazily when done."""
        chosen = str(self.output.value) not in ("", ".")
        try:
            out = (
                Path(self.output.value)
                if chosen
                else default_stack_folder(layer.name, run, tta, volume)
            )
        except OSError as exc:
            self.job.fail(exc)
            return None
        unc, overwrite = bool(self.uncertainty.value), bool(self.overwrite.value)

        def work(progress: Any, cancel: Any) -> dict[str, Any]:
            return segment_to_disk(
                run, volume, out, tta=tta, uncertainty=unc, overwrite=overwrite,
                progress=progress, cancel=cancel,
            )  # fmt: skip

        return self.job.start(work, lambda summary: self._done_on_disk(layer, run, summary))

    def _done_on_disk(self, image: Image, run: Path, summary: dict[str, Any]) -> None:
        """Show the OME-Zarr labels (and uncertainty) of a finished ``segment_stack`` lazily
        (dask: a slice is read when shown), at the image's scale."""
        import dask.array as da
        import zarr

        from tomoseg.inference.stack_uncertainty import UNCERTAINTY_NAME

        out = Path(summary["out"])
        scale = tuple(image.scale[-3:]) if image.ndim == 3 else (1.0, *image.scale[-2:])
        labels = da.from_zarr(zarr.open_array(str(Path(summary["volume"]) / "0"), mode="r"))
        name = f"{image.name} labels"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_labels(labels, name=name, scale=scale)
        layer.metadata.update(
            tomoseg_original=labels, tomoseg_run=str(run), tomoseg_image=image.name,
            tomoseg_stack=str(out),
        )  # fmt: skip
        if summary.get("uncertainty"):
            unc = da.from_zarr(zarr.open_array(str(out / UNCERTAINTY_NAME / "0"), mode="r"))
            uname = f"{image.name} uncertainty"
            if uname in self.viewer.layers:
                self.viewer.layers.remove(uname)
            self.viewer.add_image(unc, name=uname, scale=scale, colormap="magma",
                                  blending="additive", contrast_limits=(0.0, 1.0))  # fmt: skip
        self.job.status.value = (
            f"{plural(summary['slices'], 'slice')} ({summary['computed']} now, "
            f"{summary['skipped']} before) -> {out.name}"
        )
        self.job.status.tooltip = str(out)

    def _done(self, image: Image, volume: Any, seg: Segmentation) -> None:
        name, shape = f"{image.name} labels", tuple(volume.shape)
        scale = tuple(image.scale[-3:]) if image.ndim == 3 else (1.0, *image.scale[-2:])
        old = self.viewer.layers[name] if name in self.viewer.layers else None
        if old is not None and old.data.shape == shape:
            labels = np.array(old.data)
            original = np.array(old.metadata.get("tomoseg_original", np.zeros(shape, np.uint8)))
        else:
            labels, original = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
        labels[seg.slices] = seg.labels
        original[seg.slices] = seg.labels
        layer = self._show(labels, "labels", name, scale=scale)
        layer.metadata.update(
            tomoseg_original=original, tomoseg_run=str(seg.run), tomoseg_image=image.name
        )
        for maps, what, cmap in (
            (seg.probability, f"probability {seg.class_of_interest}", "viridis"),
            (seg.uncertainty, "uncertainty", "magma"),
        ):
            if maps is None:
                continue
            lname = f"{image.name} {what}"
            old_map = self.viewer.layers[lname] if lname in self.viewer.layers else None
            full = (
                np.array(old_map.data)
                if old_map is not None and old_map.data.shape == shape
                else np.zeros(shape, np.float32)
            )
            full[seg.slices] = maps
            self._show(full, "image", lname, scale=scale, colormap=cmap, blending="additive",
                       contrast_limits=(0.0, 1.0), visible=what == "uncertainty")  # fmt: skip
        self.job.status.value = f"segmented {plural(len(seg.slices), 'slice')} with {seg.run.name}"


def _next_folder(run: Path) -> Path:
    """``<run>-ft1``, ``<run>-ft2``, ...: the first that does not exist (never the run)."""
    i = 1
    while (run.parent / f"{run.name}-ft{i}").exists():
        i += 1
    return run.parent / f"{run.name}-ft{i}"


class FineTuneWidget(_Widget):
    """Fine-tune a run on the slices the user corrected in a Labels layer, then re-segment.

    With a layer the Segment widget wrote, the slices the user changed are the training data:
    whole (``train on``: corrected slices, the default: what was left unchanged is accepted as
    right) or only the changed pixels (the rest unannotated; on the phantom this made the run
    much worse, docs/napari.md); untouched slices are left out. With any other Labels layer,
    napari's 0 is not annotated and ``k`` is class ``k - 1``. The new run (default ``<run>-ft<N>`` beside the run) records the
    run as its parent; the run is never written to. The new segmentation goes to a Labels
    layer ``<image> labels <new run>``.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self.run = LineEdit(label="run (blank: the layer's)", value="")
        self.image = ComboBox(label="image", choices=_layers(napari_viewer, Image))
        self.corrected = ComboBox(label="corrected labels", choices=_layers(napari_viewer, Labels))
        self.out = LineEdit(label="new run (blank: <run>-ftN)", value="")
        self.minutes = FloatSpinBox(label="time budget (min)", value=2.0, min=0.1, max=600)
        self.train_on = ComboBox(
            label="train on", choices=["corrected slices", "changed pixels only"]
        )
        self.resegment = ComboBox(label="then segment", choices=["whole volume", "nothing"])
        self.button = PushButton(text="Fine-tune")
        super().__init__(
            napari_viewer,
            [self.run, self.image, self.corrected, self.out, self.minutes, self.train_on,
             self.resegment, self.button],
        )  # fmt: skip
        self.button.changed.connect(self.fine_tune)
        #: extra :func:`tomoseg.fine_tune` options (tests: ``epochs`` instead of the budget)
        self.train_options: dict[str, Any] = {}

    def _run_folder(self, labels: Labels) -> Path:
        given = str(self.run.value).strip()
        if given:
            return Path(given)
        if "tomoseg_run" in labels.metadata:
            return Path(labels.metadata["tomoseg_run"])
        raise TomosegError("run: choose the run to fine-tune")

    def fine_tune(self) -> Any:
        """Start the fine-tune (the button)."""
        image, labels = self.image.value, self.corrected.value
        try:
            if image is None or labels is None:
                raise TomosegError("choose the image layer and the corrected labels layer")
            volume = as_volume(image.data, f"image layer {image.name!r}")
            lab = as_volume(labels.data, f"labels layer {labels.name!r}")
            if tuple(lab.shape) != tuple(volume.shape):
                raise TomosegError(
                    f"labels layer {labels.name!r} has shape {tuple(lab.shape)}, the image "
                    f"{tuple(volume.shape)}"
                )
            run = self._run_folder(labels)
            edits = edited_slices(
                np.asarray(lab),
                labels.metadata.get("tomoseg_original"),
                whole=self.train_on.value == "corrected slices",
            )
            if not edits:
                raise TomosegError(
                    f"labels layer {labels.name!r}: no corrected pixel (paint on a few slices)"
                )
        except TomosegError as exc:
            self.job.fail(exc)
            return None
        given = str(self.out.value).strip()
        out = Path(given) if given else _next_folder(run)
        slices = sorted(edits)
        images = [np.asarray(volume[z]) for z in slices]
        masks = [edits[z] for z in slices]
        options = {"time_budget": float(self.minutes.value), **self.train_options}
        then = self.resegment.value == "whole volume"

        def work(progress: Any, cancel: Any) -> tuple[Path, Segmentation | None]:
            import tomoseg

            child = tomoseg.fine_tune(
                run, images, masks, out, ignore_label=IGNORE, progress=progress,
                cancel=cancel, **options,
            )  # fmt: skip
            if not then:
                return child.path, None
            seg = segment_volume(
                child.path, volume, list(range(volume.shape[0])), progress=progress, cancel=cancel
            )
            return child.path, seg

        return self.job.start(work, lambda result: self._done(image, labels, slices, *result))

    def _done(self, image: Image, labels: Labels, slices: list[int], child: Path, seg: Any) -> None:
        self.last_run = child
        if seg is not None:
            name = f"{image.name} labels {child.name}"
            layer = self._show(seg.labels, "labels", name, scale=labels.scale)
            layer.metadata.update(
                tomoseg_original=seg.labels.copy(), tomoseg_run=str(child),
                tomoseg_image=image.name,
            )  # fmt: skip
        self.job.status.value = f"fine-tuned on slices {slices}: new run {child}"


class TrainWidget(_Widget):
    """Train a new run from an image layer and a sparse annotations layer (napari's 0 = not
    annotated, 1.. = the classes in the order named), on the slices that hold annotations."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self.image = ComboBox(label="image", choices=_layers(napari_viewer, Image))
        self.annotations = ComboBox(label="annotations", choices=_layers(napari_viewer, Labels))
        self.classes = LineEdit(label="classes (1, 2, ...)", value="background,foreground")
        self.out = LineEdit(label="new run folder", value="")
        self.minutes = FloatSpinBox(label="time budget (min)", value=5.0, min=0.1, max=6000)
        self.button = PushButton(text="Train")
        super().__init__(
            napari_viewer,
            [self.image, self.annotations, self.classes, self.out, self.minutes, self.button],
        )
        self.button.changed.connect(self.train)
        self.train_options: dict[str, Any] = {}  # extra TrainConfig fields (tests: tiny networks)

    def train(self) -> Any:
        """Start the training (the button)."""
        from tomoseg.training.fine_tune import train_arrays

        image, labels = self.image.value, self.annotations.value
        try:
            if image is None or labels is None:
                raise TomosegError("choose the image layer and the annotations layer")
            volume = as_volume(image.data, f"image layer {image.name!r}")
            edits = edited_slices(np.asarray(as_volume(labels.data, "annotations")), None)
            if not edits:
                raise TomosegError(f"annotations layer {labels.name!r} holds no annotation")
            if not str(self.out.value).strip():
                raise TomosegError("out: choose the folder of the new run")
        except TomosegError as exc:
            self.job.fail(exc)
            return None
        classes = [c.strip() for c in str(self.classes.value).split(",") if c.strip()]
        slices = sorted(edits)
        images = [np.asarray(volume[z]) for z in slices]
        masks = [edits[z] for z in slices]
        out = Path(str(self.out.value))
        options = {"time_budget": float(self.minutes.value), **self.train_options}

        def work(progress: Any, cancel: Any) -> Path:
            return train_arrays(
                images, masks, out, classes=classes, ignore_label=IGNORE, progress=progress,
                cancel=cancel, **options,
            )  # fmt: skip

        return self.job.start(work, self._done)

    def _done(self, run: Path) -> None:
        self.last_run = run
        self.job.status.value = f"run written to {run}"


class ObjectsWidget(_Widget):
    """3D objects of a class of a Labels layer (:func:`tomoseg.measure_objects`, at the layer's
    scale): a table (click a header to sort; select a row to centre the view on the object)
    and a Points layer at the centroids."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self.layer = ComboBox(label="labels", choices=_layers(napari_viewer, Labels))
        self.class_id = SpinBox(label="class id", value=1, min=1, max=255)
        self.min_volume = SpinBox(label="min voxels", value=10, min=0, max=10**9)
        self.button = PushButton(text="Measure")
        self.table = Table()
        super().__init__(
            napari_viewer, [self.layer, self.class_id, self.min_volume, self.button, self.table]
        )
        self.table.native.setSortingEnabled(True)
        self.table.native.itemSelectionChanged.connect(self._centre)
        self.button.changed.connect(self.measure)
        self.result: dict[str, np.ndarray] = {}

    def measure(self) -> Any:
        """Start the measurement (the button)."""
        layer = self.layer.value
        if layer is None:
            self.job.fail("labels: choose a Labels layer")
            return None
        data, class_id, smallest = layer.data, int(self.class_id.value), int(self.min_volume.value)
        spacing = tuple(float(v) for v in layer.scale[-3:]) if layer.ndim == 3 else (1.0,) * 3

        def work(progress: Any, cancel: Any) -> dict[str, np.ndarray]:
            import tomoseg

            vol = np.asarray(as_volume(data, f"labels layer {layer.name!r}"))
            return tomoseg.measure_objects(
                vol, class_id=class_id, spacing=spacing, min_volume=smallest
            )

        return self.job.start(work, lambda result: self._done(layer, spacing, result))

    def _done(self, layer: Labels, spacing: tuple[float, ...], result: dict) -> None:
        self.result = result
        order = np.argsort(-np.asarray(result["num_pixels"]), kind="stable")  # largest first
        cols = ["label", "num_pixels", "area", "centroid-0", "centroid-1", "centroid-2"]
        self.table.value = {
            c: [int(v) if c in ("label", "num_pixels") else round(float(v), 2) for v in
                np.asarray(result[c])[order]]
            for c in cols
            if c in result
        }  # fmt: skip
        centres = np.stack([result[f"centroid-{k}"] / spacing[k] for k in range(3)], axis=1)
        name = f"{layer.name} objects"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        if len(centres):
            self.viewer.add_points(centres, name=name, scale=spacing, size=3, face_color="yellow")
        self.job.status.value = f"{plural(len(centres), 'object')} of class {self.class_id.value}"

    def _centre(self) -> None:
        rows = {i.row() for i in self.table.native.selectedIndexes()}
        if not rows or not self.result:
            return
        item = self.table.native.item(min(rows), 0)
        label = float(item.text()) if item is not None else None
        idx = int(np.flatnonzero(self.result["label"] == label)[0]) if label is not None else 0
        world = [float(self.result[f"centroid-{k}"][idx]) for k in range(3)]
        self.viewer.dims.set_point(0, world[0])
        self.viewer.camera.center = tuple(world[1:])


class NextSlicesWidget(_Widget):
    """Slices to label next (:func:`~tomoseg.inference.suggest.suggest`: most uncertain first,
    spread over z) and a button that shows the next one."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self.run = FileEdit(mode="d", label="run")
        self.image = ComboBox(label="image", choices=_layers(napari_viewer, Image))
        self.n = SpinBox(label="slices", value=5, min=1, max=10000)
        self.button = PushButton(text="Rank slices")
        self.ranked = Select(label="ranked", choices=[])
        self.next_button = PushButton(text="Go to next")
        super().__init__(
            napari_viewer, [self.run, self.image, self.n, self.button, self.ranked,
                            self.next_button],
        )  # fmt: skip
        self.button.changed.connect(self.rank)
        self.next_button.changed.connect(self.go_next)
        self.slices: list[int] = []
        self._at = -1

    def rank(self) -> Any:
        """Start the ranking (the button)."""
        from tomoseg.inference.suggest import suggest

        layer = self.image.value
        try:
            if layer is None:
                raise TomosegError("image: choose an image layer")
            volume = as_volume(layer.data, f"image layer {layer.name!r}")
        except TomosegError as exc:
            self.job.fail(exc)
            return None
        run, n = Path(self.run.value), int(self.n.value)

        def work(progress: Any, cancel: Any) -> dict[str, Any]:
            return suggest(run, volume, n=n, progress=progress, cancel=cancel)

        return self.job.start(work, self._done)

    def _done(self, result: dict[str, Any]) -> None:
        self.slices = [s["index"] for s in result["slices"]]
        self._at = -1
        self.ranked.choices = [
            (f"{s['rank']}. slice {s['index']} ({s['score']:.3f})", s["index"])
            for s in result["slices"]
        ]
        self.job.status.value = f"{plural(len(self.slices), 'slice')} ranked: press Go to next"

    def go_next(self) -> None:
        """Show the next ranked slice (wrapping around)."""
        if not self.slices:
            self.job.fail("rank the slices first")
            return
        self._at = (self._at + 1) % len(self.slices)
        step = list(self.viewer.dims.current_step)
        step[-3 if len(step) >= 3 else 0] = self.slices[self._at]
        self.viewer.dims.current_step = tuple(step)
