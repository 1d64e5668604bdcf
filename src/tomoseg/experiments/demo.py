"""``tomoseg demo``: the whole job on the embedded synthetic phantom, on CPU in a few minutes.

1. write a small phantom dataset (somas among look-alike vessels);
2. score the traditional baseline (Otsu threshold) on the held-out test slices;
3. train the default network on random crops of the training slices;
4. evaluate it on the same test slices and print both side by side.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tomoseg.config.schema import TrainConfig, load_config
from tomoseg.evaluation.score import score_folders
from tomoseg.io.datasets import load_dataset, split_pairs
from tomoseg.io.images import read_image
from tomoseg.io.writers import write_mask
from tomoseg.synthetic.phantom import generate_phantom, otsu_baseline
from tomoseg.utils.files import load_json
from tomoseg.utils.progress import CancelToken, ProgressCallback, job_progress

DEMO_SHAPE = (384, 384)
DEMO_SLICES = 20


def demo_config(epochs: int = 8) -> TrainConfig:
    """The default config made smaller (width 16, depth 4, 128 px crops) so that it trains on
    the demo phantom in about a minute on a 2-core CPU."""
    return load_config(
        None, {"width": 16, "depth": 4, "crop_size": 128, "crops": 256, "epochs": epochs}
    )


def otsu_predictions(data: Path, split: str, out: Path) -> Path:
    """Write Otsu-threshold masks of a split's images into ``out`` (one PNG per id)."""
    for p in split_pairs(data, split):
        write_mask(out / f"{p.id}.png", otsu_baseline(read_image(p.image)))
    return out


def run_demo(
    out: Path,
    *,
    overwrite: bool = True,
    epochs: int = 8,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out``; return the soma IoU/BF1 of Otsu and of the network.

    Args:
        out: folder for ``phantom/``, ``otsu/``, ``run/`` and ``evaluation/``.
        overwrite: replace an earlier demo in ``out``.
        epochs: training epochs.
        seed: seed of the phantom and of training.
        progress: receives a message per step (``demo``) and the training's events.
        cancel: stops the demo between steps and the training at its next batch
            (:class:`~tomoseg.utils.progress.Cancelled`).

    Returns:
        ``otsu`` and ``network`` (``iou``, ``bf1`` of the class of interest), ``title`` and
        ``rows`` (the comparison table: method, accuracy, IoU, BF1 in %), ``seconds``,
        ``seconds_per_slice`` (inference on the test slices), ``run`` and ``out``.
    """
    from tomoseg.inference.evaluate import evaluate_run
    from tomoseg.inference.predictor import InferenceSettings
    from tomoseg.training.trainer import train

    out = Path(out)
    t_start = time.perf_counter()
    job = job_progress("demo", "step", None, progress, cancel)  # its steps: messages
    data = out / "phantom"
    job.message(f"[1/4] phantom {DEMO_SHAPE[0]}x{DEMO_SHAPE[1]} x {DEMO_SLICES} slices -> {data}")
    generate_phantom(data, DEMO_SHAPE, DEMO_SLICES, seed, overwrite=overwrite)
    job.check()
    job.message("[2/4] Otsu threshold baseline on the test slices")
    otsu_pred = otsu_predictions(data, "test", out / "otsu" / "predictions")
    otsu = score_folders(
        otsu_pred,
        data / "test" / "masks",
        out / "otsu",
        images=data / "test" / "images",
        overwrite=True,
    )
    job.check()
    cfg = demo_config(epochs).model_copy(update={"seed": seed})
    job.message(
        f"[3/4] training {cfg.model} (width {cfg.width}) on {cfg.crops} crops of "
        f"{cfg.crop_size} px, {cfg.epochs} epochs"
    )
    run = train(data, out / "run", cfg, overwrite=overwrite, progress=progress, cancel=cancel)
    job.check()
    job.message("[4/4] evaluating the network on the test slices")
    net, sec = evaluate_run(
        run, data, out / "evaluation", settings=InferenceSettings(device=cfg.device),
        overwrite=True, progress=progress, cancel=cancel,
    )  # fmt: skip
    job.check()
    result = _comparison(load_dataset(data), cfg, otsu, net)
    elapsed = time.perf_counter() - t_start
    return {**result, "seconds": elapsed, "seconds_per_slice": sec, "run": run, "out": out}


def _comparison(spec: Any, cfg: TrainConfig, otsu: Any, net: Any) -> dict[str, Any]:
    """Otsu's and the network's scores of the class of interest, as numbers and table rows."""
    k, coi = spec.coi_index, spec.class_of_interest
    rows = [
        {
            "method": name,
            "accuracy": f"{100 * s.mean_accuracy:.1f}",
            f"IoU {coi}": f"{100 * s.mean_iou[k]:.1f}",
            f"BF1 {coi} (2 px)": f"{100 * s.mean_bf1[k]:.1f}",
        }
        for name, s in (("Otsu threshold", otsu), (f"{cfg.model} (tomoseg)", net))
    ]
    return {
        "otsu": {"iou": float(otsu.mean_iou[k]), "bf1": float(otsu.mean_bf1[k])},
        "network": {"iou": float(net.mean_iou[k]), "bf1": float(net.mean_bf1[k])},
        "title": f"{coi} on held-out phantom slices (mean over {len(net.images)} images, %)",
        "rows": rows,
    }


def sweep_demo_setup(
    out: Path | None, *, progress: ProgressCallback | None = None
) -> tuple[Path, Path, str, str, dict]:
    """Data and a small grid for ``tomoseg sweep --demo`` (about 10 minutes on a 2-core CPU).

    Args:
        out: the sweep folder (default ``tomoseg-sweep-demo``).
        progress: receives a message when the demo phantom is written.

    Returns:
        ``(data, out, sizes, counts, config overrides)``.
    """
    out = Path(out) if out is not None else Path("tomoseg-sweep-demo")
    data = out.parent / f"{out.name}-phantom"
    if not (data / "dataset.json").is_file():
        job_progress("sweep-demo", "step", None, progress).message(
            f"writing the demo phantom to {data}"
        )
        generate_phantom(data, DEMO_SHAPE, DEMO_SLICES, 0)
    return data, out, "64,128,full", "64,256", {"epochs": 6, "width": 16, "depth": 4}


def phantom_stack(data: Path, path: Path) -> Path:
    """Write the phantom's slices, all splits in z order, as one multi-page TIFF (page by page)."""
    import tifffile

    from tomoseg.io.writers import atomic_write

    spec = load_json(Path(data) / "dataset.json")
    slices = sorted((i, split) for split, ids in spec["splits"].items() for i in ids)

    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp) as w:
            for i, split in slices:
                w.write(
                    read_image(Path(data) / split / "images" / f"{i}.tif"), photometric="minisblack"
                )

    return atomic_write(path, write)


def run_stack_demo(
    out: Path,
    *,
    overwrite: bool = True,
    epochs: int = 8,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """``tomoseg demo --stack``: phantom -> training -> whole-stack segmentation -> 3D objects,
    compared with the phantom's 3D truth.

    Args:
        out: folder for ``phantom/``, ``stack.tif``, ``run/``, ``segmented/``, ``objects/``.
        overwrite, epochs, seed: as :func:`run_demo`.
        progress: receives a message per step (``demo``) and the training's events.
        cancel: stops the demo between steps and the training at its next batch
            (:class:`~tomoseg.utils.progress.Cancelled`).

    Returns:
        The objects summary (with the detection scores against the truth), plus ``stack``
        (the segmentation summary) and ``out``.
    """
    from tomoseg.evaluation.objects import analyze_objects
    from tomoseg.inference.stack import segment_stack
    from tomoseg.training.trainer import train

    out = Path(out)
    job = job_progress("demo", "step", None, progress, cancel)  # its steps: messages
    data = out / "phantom"
    job.message(f"[1/4] phantom {DEMO_SHAPE[0]}x{DEMO_SHAPE[1]} x {DEMO_SLICES} slices -> {data}")
    generate_phantom(data, DEMO_SHAPE, DEMO_SLICES, seed, overwrite=overwrite)
    stack = phantom_stack(data, out / "stack.tif")
    job.check()
    cfg = demo_config(epochs).model_copy(update={"seed": seed})
    job.message(
        f"[2/4] training {cfg.model} (width {cfg.width}) on {cfg.crops} crops of {cfg.crop_size} px"
    )
    run = train(data, out / "run", cfg, overwrite=overwrite, progress=progress, cancel=cancel)
    job.check()
    job.message(f"[3/4] segmenting the whole stack {stack}")
    info = segment_stack(
        run, stack, out / "segmented", overwrite=overwrite, progress=progress, cancel=cancel
    )
    job.message(f"      {info['slices']} slices, {info['slices_per_second']:.2f} slices/s")
    job.check()
    job.message(
        "[4/4] 3D objects (26-connectivity, objects under 30 voxels removed) vs the 3D truth"
    )
    summary = analyze_objects(
        out / "segmented", out / "objects", min_volume=30,
        truth=data / "truth3d" / "labels.tif", overwrite=overwrite,
    )  # fmt: skip
    job.check()
    return {**summary, "stack": info, "out": out}
