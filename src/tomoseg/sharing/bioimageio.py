"""A run as a bioimage.io model package (spec 0.5), written and validated with ``bioimageio.spec``.

The package (a ``.zip``) holds:

* weights: ``pytorch_state_dict`` (the source; the architecture is ``tomoseg_network.py``,
  :mod:`tomoseg.sharing.network`, which needs ``pip install tomoseg``), ``torchscript`` and
  ``onnx`` converted from it (consumers choose by their own order; ilastik and deepImageJ take
  TorchScript first);
* one input ``raw`` (batch, channel, y, x): channel 1, or ``2k + 1`` slices ``z-k .. z+k`` with
  2.5D context; y and x at least the network's stride and a multiple of it; preprocessing
  ``ensure_dtype float32``, ``scale_linear`` and ``clip`` [0, 1]: tomoseg's fixed percentile clip
  ``(x - lower) / (upper - lower)`` of the training pixels;
* one output ``probabilities`` (batch, channel = the classes, y, x), postprocessing ``softmax``
  over the channels;
* test input and output (a crop of a training image; tomoseg's probabilities on it), a cover
  (the crop beside its labels), a README from the run's scores, the citations of the network
  and tomoseg, and the run's ``config.yaml``, ``run.json`` and tuned ``decision.json`` as
  attachments (the decision is tomoseg's to apply: bioimage.io consumers do not).
"""

from __future__ import annotations

import csv
import getpass
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from PIL import Image

from tomoseg._version import __version__
from tomoseg.errors import TomosegError
from tomoseg.io.writers import atomic_write
from tomoseg.models.registry import get_architecture
from tomoseg.runtime.package import bioimageio_spec, first_complaint
from tomoseg.sharing import network as network_module
from tomoseg.sharing.files import OPSET, context_channel_names, export_onnx, traced
from tomoseg.sharing.prepare import (
    TOLERANCE,
    Exported,
    Prepared,
    check_reproduces,
    onnx_diff,
    torchscript_diff,
)
from tomoseg.utils.files import load_json
from tomoseg.utils.format import plural

#: where tomoseg is cited from
TOMOSEG_URL = "https://pypi.org/project/tomoseg/"
#: tags every package has
BASE_TAGS = ("tomoseg", "segmentation", "semantic-segmentation", "2d", "pytorch")


def _name(text: str) -> str:
    """A package name the spec accepts (letters, digits, ``_+- ()``; at least 5 characters)."""
    clean = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", text).strip() or "tomoseg-model"
    return clean if len(clean) >= 5 else f"tomoseg {clean}"


def _cover(prep: Prepared, path: Path) -> None:
    """A 2:1 panel: the test crop (normalised grey) beside its tomoseg labels in colour."""
    grey = prep.normalized[0, prep.normalized.shape[1] // 2]
    labels = prep.reference[0].argmax(0)
    palette = np.array(
        [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]],
        np.uint8,
    )
    colour = palette[labels % len(palette)]
    g = (grey * 255).astype(np.uint8)
    overlay = (0.5 * np.stack([g] * 3, -1) + 0.5 * colour).astype(np.uint8)
    left = Image.fromarray(g).convert("RGB").resize((256, 256), Image.NEAREST)
    right = Image.fromarray(overlay).resize((256, 256), Image.NEAREST)
    panel = Image.new("RGB", (512, 256))
    panel.paste(left, (0, 0))
    panel.paste(right, (256, 0))
    panel.save(path)


def _metrics_rows(folder: Path) -> list[dict[str, str]]:
    f = folder / "metrics.csv"
    if not f.is_file():
        return []
    with open(f, newline="") as fh:
        return list(csv.DictReader(fh))


def _fmt(v: Any) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _validation_lines(prep: Prepared) -> list[str]:
    """The validation scores of the exported epoch (``metrics.csv``)."""
    epoch = prep.meta.get("epoch")
    rows = _metrics_rows(prep.predictor.run.folder)
    row = next((r for r in rows if str(r.get("epoch")) == str(epoch)), rows[-1] if rows else None)
    if row is None:
        return ["No validation scores recorded."]
    keys = [k for k in row if k.startswith("val_")]
    lines = [f"Validation scores of epoch {row.get('epoch')} (`metrics.csv`):", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k[4:]} | {_fmt(row[k])} |" for k in keys]
    return lines


def _test_lines(evaluation: Path | None, meta: dict[str, Any] | None = None) -> list[str]:
    """Test scores from a ``tomoseg evaluate`` report (its ``metrics.json``) of this run.

    Raises:
        TomosegError: no report there; a report of other classes, or of other weights (another
            epoch), than the run's.
    """
    if evaluation is None:
        return ["No test scores were given (`tomoseg export --evaluation REPORT`)."]
    f = evaluation / "metrics.json" if evaluation.is_dir() else evaluation
    if not f.is_file():
        raise TomosegError(f"evaluation={evaluation}: no metrics.json there")
    m = load_json(f)
    if meta is not None and isinstance(m, dict):
        if m.get("classes") != meta.get("classes"):
            raise TomosegError(
                f"evaluation={evaluation}: a report of classes {m.get('classes')}, the run's are "
                f"{meta.get('classes')}: give the report of this run"
            )
        epoch = (m.get("inference") or {}).get("epoch")
        if epoch is not None and meta.get("epoch") is not None and epoch != meta["epoch"]:
            raise TomosegError(
                f"evaluation={evaluation}: a report of the weights of epoch {epoch}; the "
                f"exported weights are of epoch {meta['epoch']}: give the report of these weights"
            )
    mean = m.get("mean", {}) if isinstance(m, dict) else {}
    lines = [
        f"Test scores (`tomoseg evaluate`, {plural(len(m.get('per_image', [])), 'image')}):",
        "",
    ]
    lines += ["| metric | " + " | ".join(map(str, m.get("classes", []))) + " |"]
    lines += ["|---|" + "---|" * len(m.get("classes", []))]
    for metric, per_class in mean.items():
        if isinstance(per_class, dict):
            cells = [_fmt(per_class.get(str(c))) for c in m.get("classes", [])]
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def _readme(prep: Prepared, name: str, evaluation: Path | None, diffs: dict[str, float]) -> str:
    meta, loaded = prep.meta, prep.predictor.run
    hp = meta["model"]
    arch = get_architecture(hp["name"])
    norm = loaded.normalization
    decision = (
        load_json(loaded.folder / "decision.json")
        if (loaded.folder / "decision.json").is_file()
        else None
    )
    data = prep.record.get("data")
    validation = (prep.record.get("validation") or {}).get("source")
    lines = [
        f"# {name}",
        "",
        f"A {hp['name']} ({arch.source}) trained with tomoseg {meta.get('tomoseg_version', '')} "
        f"to segment 2D grayscale slices into {len(meta['classes'])} classes: "
        + ", ".join(f"{i} = {c}" for i, c in enumerate(meta["classes"]))
        + f" (class of interest: {meta['class_of_interest']}).",
        "",
        "## Network",
        "",
        f"- width {hp['width']}, depth {hp['depth']}, input channels {hp['in_channels']}"
        + (
            f" (2.5D: the slice and {prep.predictor.context} slices above and below, channels "
            + ", ".join(context_channel_names(prep.predictor.context))
            + ")"
            if prep.predictor.context
            else ""
        ),
        f"- input height and width: multiples of {prep.stride} px, at least {prep.stride}",
        f"- weights: {meta.get('which')} (epoch {meta.get('epoch')})",
        "",
        "## Input normalisation (applied by every bioimage.io consumer)",
        "",
        f"`clip((x - {norm.lower:g}) / ({norm.upper:g} - {norm.lower:g}), 0, 1)`: the "
        f"{norm.p_low:g} and {norm.p_high:g} percentiles of the training pixels, fixed. "
        "NaN or infinite pixels (outside a CT's field of view) are labelled background by "
        "tomoseg; other tools pass them to the network as they are.",
        "",
        "## Output",
        "",
        "Class probabilities (softmax over the channels); the label of a pixel is the channel "
        "of the highest probability.",
        "",
        "## What bioimage.io consumers do not apply",
        "",
    ]
    if decision:
        d = decision.get("decision", {})
        lines += [
            "tomoseg tuned a decision on the validation images (attached `decision.json`): "
            f"add {d.get('offset')} to the score of class {d.get('class_id')} before the "
            f"argmax, then remove objects smaller than {d.get('min_size')} px and fill holes "
            f"smaller than {d.get('max_hole')} px. The probabilities in this package are "
            "before that decision; tomoseg applies it when it runs this package "
            "(`tomoseg segment-stack PACKAGE.zip ...`), other tools do not.",
        ]
    else:
        lines += ["The run has no tuned decision: the argmax of the probabilities is tomoseg's."]
    lines += ["", "## Scores", ""]
    lines += _validation_lines(prep) + [""] + _test_lines(evaluation, prep.meta)
    lines += [
        "",
        "## Training",
        "",
        f"- data: {data}",
        f"- validation: {validation}",
        "- command: `tomoseg train --data DATA --out RUN --config config.yaml` "
        "(the attached `config.yaml` holds every setting)",
        "",
        "## Validation",
        "",
        "The TorchScript and ONNX weights reproduce tomoseg's probabilities on the test input "
        "(float32): largest absolute difference "
        + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items())
        + f" (tomoseg refuses to write more than {TOLERANCE:g}).",
        "",
    ]
    return "\n".join(lines)


def _descr(prep: Prepared, folder: Path, *, name: str, authors: list[str], license: str,
           tags: list[str], attachments: list[Path]) -> Any:  # fmt: skip
    """The :class:`bioimageio.spec.model.v0_5.ModelDescr` of the files in ``folder``."""
    from bioimageio.spec.model import v0_5 as s

    meta, loaded = prep.meta, prep.predictor.run
    hp = meta["model"]
    arch = get_architecture(hp["name"])
    norm = loaded.normalization
    gain = 1.0 / (norm.upper - norm.lower)
    k = prep.predictor.context
    tid_in, tid_out = s.TensorId("raw"), s.TensorId("probabilities")
    space = s.ParameterizedSize(min=prep.stride, step=prep.stride)
    inp = s.InputTensorDescr(
        id=tid_in,
        description="raw grayscale intensities (the training images' units)",
        axes=[
            s.BatchAxis(),
            s.ChannelAxis(channel_names=context_channel_names(k)),
            s.SpaceInputAxis(id=s.AxisId("y"), size=space),
            s.SpaceInputAxis(id=s.AxisId("x"), size=space),
        ],
        test_tensor=s.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=s.FileDescr(source=folder / "sample_input.tif"),
        data=s.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            s.EnsureDtypeDescr(kwargs=s.EnsureDtypeKwargs(dtype="float32")),
            s.ScaleLinearDescr(kwargs=s.ScaleLinearKwargs(gain=gain, offset=-norm.lower * gain)),
            s.ClipDescr(kwargs=s.ClipKwargs(min=0.0, max=1.0)),
        ],
    )
    out = s.OutputTensorDescr(
        id=tid_out,
        description="class probabilities (softmax over the channels)",
        axes=[
            s.BatchAxis(),
            s.ChannelAxis(channel_names=_channel_ids(meta["classes"])),
            s.SpaceOutputAxis(id=s.AxisId("y"), size=s.SizeReference(tensor_id=tid_in, axis_id=s.AxisId("y"))),
            s.SpaceOutputAxis(id=s.AxisId("x"), size=s.SizeReference(tensor_id=tid_in, axis_id=s.AxisId("x"))),
        ],
        test_tensor=s.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=s.FileDescr(source=folder / "sample_output.tif"),
        data=s.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        postprocessing=[s.SoftmaxDescr(kwargs=s.SoftmaxKwargs(axis=s.AxisId("channel")))],
    )  # fmt: skip
    version = s.Version(torch.__version__.split("+")[0])
    bias = [float(b) + 0.0 for b in prep.net.bias.flatten()]  # + 0.0: no -0.0
    weights = s.WeightsDescr(
        pytorch_state_dict=s.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt",
            architecture=s.ArchitectureFromFileDescr(
                source=folder / "tomoseg_network.py",
                callable=s.Identifier("TomosegNetwork"),
                kwargs={
                    **{
                        k_: hp[k_]
                        for k_ in ("name", "in_channels", "num_classes", "width", "depth")
                    },
                    "bias": bias,
                },
            ),  # fmt: skip
            pytorch_version=version,
        ),
        torchscript=s.TorchscriptWeightsDescr(
            source=folder / "weights_torchscript.pt",
            pytorch_version=version,
            parent="pytorch_state_dict",
        ),
        onnx=s.OnnxWeightsDescr(
            source=folder / "weights.onnx", opset_version=OPSET, parent="pytorch_state_dict"
        ),
    )
    from bioimageio.spec.generic.v0_3 import Author, CiteEntry

    cite = [
        CiteEntry(text=f"{hp['name']}: {arch.source}", doi=arch.doi) if arch.doi
        else CiteEntry(text=f"{hp['name']}: {arch.source}", url=TOMOSEG_URL),
        CiteEntry(text=f"tomoseg {__version__}", url=TOMOSEG_URL),
    ]  # fmt: skip
    return s.ModelDescr(
        name=name,
        description=(
            f"{hp['name']} segmenting 2D grayscale slices into "
            + ", ".join(meta["classes"])
            + " (trained with tomoseg)"
        )[:1024],
        authors=[Author(name=a) for a in authors],
        cite=cite,
        license=license,
        tags=list(dict.fromkeys([*BASE_TAGS, hp["name"], *tags])),
        documentation=s.FileDescr(source=folder / "README.md"),
        covers=[s.FileDescr(source=folder / "cover.png")],
        inputs=[inp],
        outputs=[out],
        weights=weights,
        attachments=[s.FileDescr(source=p) for p in attachments],
        config=s.Config(
            **{
                "tomoseg": {
                    "version": __version__,
                    "model": dict(hp),
                    "classes": list(meta["classes"]),
                    "class_of_interest": meta["class_of_interest"],
                    "context": k,
                    "stride": prep.stride,
                    "weights": meta.get("which"),
                    "epoch": meta.get("epoch"),
                    "config": loaded.config.model_dump(mode="json"),
                }
            }
        ),
    )


def _channel_ids(classes: list[str]) -> list[str]:
    """Output channel names: the class names (unique)."""
    seen: dict[str, int] = {}
    out = []
    for c in classes:
        seen[c] = seen.get(c, 0) + 1
        out.append(c if seen[c] == 1 else f"{c}_{seen[c]}")
    return out


#: the order of the weights in the package's rdf.yaml: ilastik's and deepImageJ's preference
WEIGHTS_ORDER = ("torchscript", "pytorch_state_dict", "onnx")


def _torchscript_first(package: Path) -> None:
    """Rewrite the package's ``rdf.yaml`` with its weights in :data:`WEIGHTS_ORDER` (the spec's
    writer lists them alphabetically; consumers that take the first format they run see
    TorchScript first). Every other file is copied as it is."""
    import zipfile

    import yaml

    with zipfile.ZipFile(package) as z:
        entries = [(i, z.read(i.filename)) for i in z.infolist()]
    rdf = next(i for i, _ in entries if i.filename in ("rdf.yaml", "bioimageio.yaml"))
    doc = yaml.safe_load(dict((i.filename, b) for i, b in entries)[rdf.filename])
    weights = doc["weights"]
    first = {k: weights[k] for k in WEIGHTS_ORDER if k in weights}
    doc["weights"] = {**first, **{k: v for k, v in weights.items() if k not in first}}
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()
    with zipfile.ZipFile(package, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in entries:
            z.writestr(info, text if info is rdf else data)


def check_package(package: Path) -> None:
    """Validate a written package as its consumers read it (``bioimageio.spec``, files and
    their SHA-256 checked).

    Raises:
        TomosegError: the validator's first complaint.
    """
    spec = bioimageio_spec()
    descr = spec.load_description(str(package), perform_io_checks=True)
    if getattr(descr, "type", None) != "model" or not hasattr(descr, "weights"):
        summary = getattr(descr, "validation_summary", descr)
        raise TomosegError(f"the package fails validation: {first_complaint(summary)}")


def write_package(
    prep: Prepared,
    out: Path,
    *,
    name: str | None,
    authors: list[str] | None,
    license: str,
    tags: list[str],
    evaluation: Path | None,
) -> Exported:
    """Write and validate the package of ``prep`` to ``out`` (atomically).

    Raises:
        TomosegError: a network that cannot be traced or exported; weights that do not
            reproduce tomoseg's probabilities; a package that fails validation (the
            validator's first complaint).
    """
    from pydantic import ValidationError

    save_bioimageio_package = bioimageio_spec().save_bioimageio_package

    loaded = prep.predictor.run
    name = _name(name or loaded.folder.resolve().name)
    authors = authors or [getpass.getuser()]
    with tempfile.TemporaryDirectory(prefix="tomoseg-export-") as tmp:
        folder = Path(tmp)
        example = torch.from_numpy(prep.normalized)
        torch.jit.save(
            traced(prep.net, example, prep.stride), str(folder / "weights_torchscript.pt")
        )
        export_onnx(prep.net, example, folder / "weights.onnx")
        diffs = {
            "torchscript": torchscript_diff(folder / "weights_torchscript.pt", prep),
            "onnx": onnx_diff(folder / "weights.onnx", prep),
        }
        check_reproduces(diffs)
        state = {k: v.detach().cpu().clone() for k, v in prep.net.state_dict().items()}
        torch.save(state, folder / "weights.pt")
        shutil.copyfile(network_module.__file__, folder / "tomoseg_network.py")
        np.save(folder / "test_input.npy", prep.raw)
        np.save(folder / "test_output.npy", prep.reference)
        tifffile.imwrite(folder / "sample_input.tif", prep.raw)  # (B, C, Y, X), as the axes
        tifffile.imwrite(folder / "sample_output.tif", prep.reference)
        _cover(prep, folder / "cover.png")
        (folder / "README.md").write_text(_readme(prep, name, evaluation, diffs))
        attachments = []
        for f in ("decision.json", "config.yaml", "run.json"):
            if (loaded.folder / f).is_file():
                shutil.copyfile(loaded.folder / f, folder / f)
                attachments.append(folder / f)
        try:
            descr = _descr(
                prep, folder, name=name, authors=authors, license=license, tags=tags,
                attachments=attachments,
            )  # fmt: skip
        except ValidationError as exc:
            raise TomosegError(f"the package fails validation: {first_complaint(exc)}") from exc

        def write(tmp_zip: Path) -> None:
            save_bioimageio_package(descr, output_path=tmp_zip)
            _torchscript_first(tmp_zip)
            check_package(tmp_zip)

        atomic_write(out, write)
    return Exported(out, "bioimageio", 0.0, diffs, prep.crop)
