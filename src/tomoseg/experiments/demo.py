"""``tomoseg demo``: the whole job on the embedded synthetic phantom, on CPU in a few minutes.

1. write a small phantom dataset (somas among look-alike vessels);
2. score the traditional baseline (Otsu threshold) on the held-out test slices;
3. train the default network on random crops of the training slices;
4. evaluate it on the same test slices and print both side by side.
"""

from __future__ import annotations

import time
from pathlib import Path

from tomoseg.config.schema import TrainConfig, load_config
from tomoseg.evaluation.score import score_folders
from tomoseg.io.datasets import load_dataset, split_pairs
from tomoseg.io.images import read_image
from tomoseg.io.writers import write_mask
from tomoseg.synthetic.phantom import generate_phantom, otsu_baseline

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


def _printer(console):
    """Print a job's messages and per-epoch summaries on ``console``, one line each."""

    def show(event) -> None:
        if event.message and event.kind in ("message", "advance"):
            console.print(event.message, markup=False, highlight=False)

    return show


def run_demo(out: Path, console, overwrite: bool = True, epochs: int = 8, seed: int = 0) -> dict:
    """Run the demo into ``out``; return the soma IoU/BF1 of Otsu and of the network.

    Args:
        out: folder for ``phantom/``, ``otsu/``, ``run/`` and ``evaluation/``.
        console: rich console for progress lines.
        overwrite: replace an earlier demo in ``out``.
        epochs: training epochs.
        seed: seed of the phantom and of training.
    """
    from rich.table import Table

    from tomoseg.inference.evaluate import evaluate_run
    from tomoseg.inference.predictor import InferenceSettings
    from tomoseg.training.trainer import train

    out = Path(out)
    t_start = time.perf_counter()
    data = out / "phantom"
    console.print(f"[1/4] phantom {DEMO_SHAPE[0]}x{DEMO_SHAPE[1]} x {DEMO_SLICES} slices -> {data}")
    generate_phantom(data, DEMO_SHAPE, DEMO_SLICES, seed, overwrite=overwrite)
    spec = load_dataset(data)
    console.print("[2/4] Otsu threshold baseline on the test slices")
    otsu_pred = otsu_predictions(data, "test", out / "otsu" / "predictions")
    otsu = score_folders(
        otsu_pred,
        data / "test" / "masks",
        out / "otsu",
        images_dir=data / "test" / "images",
        overwrite=True,
    )
    cfg = demo_config(epochs).model_copy(update={"seed": seed})
    console.print(
        f"[3/4] training {cfg.model} (width {cfg.width}) on {cfg.crops} crops of {cfg.crop_size} px, {cfg.epochs} epochs"
    )
    run = train(data, out / "run", cfg, overwrite=overwrite, progress=_printer(console))
    console.print("[4/4] evaluating the network on the test slices")
    net, sec = evaluate_run(
        run, data, out / "evaluation", settings=InferenceSettings(device=cfg.device), overwrite=True
    )
    k = spec.coi_index
    coi = spec.class_of_interest
    table = Table(title=f"{coi} on held-out phantom slices (mean over {len(net.images)} images, %)")
    for col in ("method", "accuracy", f"IoU {coi}", f"BF1 {coi} (2 px)"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for name, s in (("Otsu threshold", otsu), (f"{cfg.model} (tomoseg)", net)):
        table.add_row(
            name,
            f"{100 * s.mean_accuracy:.1f}",
            f"{100 * s.mean_iou[k]:.1f}",
            f"{100 * s.mean_bf1[k]:.1f}",
        )
    console.print(table)
    console.print(
        f"done in {time.perf_counter() - t_start:.0f} s ({sec:.2f} s per test slice). Outputs:"
    )
    console.print(f"  training curves   {run}/curves.png  (per-epoch metrics: {run}/metrics.csv)")
    console.print(
        f"  network report    {out}/evaluation/metrics.json, overlays in {out}/evaluation/panels/"
    )
    console.print(f"  Otsu report       {out}/otsu/metrics.json, overlays in {out}/otsu/panels/")
    return {
        "otsu": {"iou": float(otsu.mean_iou[k]), "bf1": float(otsu.mean_bf1[k])},
        "network": {"iou": float(net.mean_iou[k]), "bf1": float(net.mean_bf1[k])},
    }


def sweep_demo_setup(out: Path | None, console) -> tuple[Path, Path, str, str, dict]:
    """Data and a small grid for ``tomoseg sweep --demo`` (about 10 minutes on a 2-core CPU).

    Returns:
        ``(data, out, sizes, counts, config overrides)``.
    """
    out = Path(out) if out is not None else Path("tomoseg-sweep-demo")
    data = out.parent / f"{out.name}-phantom"
    if not (data / "dataset.json").is_file():
        console.print(f"writing the demo phantom to {data}")
        generate_phantom(data, DEMO_SHAPE, DEMO_SLICES, 0)
    return data, out, "64,128,full", "64,256", {"epochs": 6, "width": 16, "depth": 4}


def phantom_stack(data: Path, path: Path) -> Path:
    """Write the phantom's slices, all splits in z order, as one multi-page TIFF (page by page)."""
    import json

    import tifffile

    from tomoseg.io.writers import atomic_write

    spec = json.loads((Path(data) / "dataset.json").read_text())
    slices = sorted((i, split) for split, ids in spec["splits"].items() for i in ids)

    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp) as w:
            for i, split in slices:
                w.write(
                    read_image(Path(data) / split / "images" / f"{i}.tif"), photometric="minisblack"
                )

    return atomic_write(path, write)


def run_stack_demo(
    out: Path, console, overwrite: bool = True, epochs: int = 8, seed: int = 0
) -> dict:
    """``tomoseg demo --stack``: phantom -> training -> whole-stack segmentation -> 3D objects,
    compared with the phantom's 3D truth.

    Returns:
        The objects summary (with the detection scores against the truth).
    """
    from tomoseg.evaluation.objects import analyze_objects
    from tomoseg.inference.stack import segment_stack
    from tomoseg.training.trainer import train

    out = Path(out)
    data = out / "phantom"
    console.print(f"[1/4] phantom {DEMO_SHAPE[0]}x{DEMO_SHAPE[1]} x {DEMO_SLICES} slices -> {data}")
    generate_phantom(data, DEMO_SHAPE, DEMO_SLICES, seed, overwrite=overwrite)
    stack = phantom_stack(data, out / "stack.tif")
    cfg = demo_config(epochs).model_copy(update={"seed": seed})
    console.print(
        f"[2/4] training {cfg.model} (width {cfg.width}) on {cfg.crops} crops of {cfg.crop_size} px"
    )
    run = train(data, out / "run", cfg, overwrite=overwrite, progress=_printer(console))
    console.print(f"[3/4] segmenting the whole stack {stack}")
    info = segment_stack(run, stack, out / "segmented", overwrite=overwrite)
    console.print(f"      {info['slices']} slices, {info['slices_per_second']:.2f} slices/s")
    console.print(
        "[4/4] 3D objects (26-connectivity, objects under 30 voxels removed) vs the 3D truth"
    )
    summary = analyze_objects(
        out / "segmented", out / "objects", min_volume=30,
        truth=data / "truth3d" / "labels.tif", overwrite=overwrite,
    )  # fmt: skip
    det = summary["detection"]
    console.print(
        f"{summary['count']} objects found, {det['true_objects']} in the truth "
        f"(count error {100 * det['count_relative_error']:+.1f} %), detection precision "
        f"{det['precision']:.2f}, recall {det['recall']:.2f} ({det['match_rule']})"
    )
    console.print(
        f"  volume for napari  {out}/segmented/labels.zarr  (objects: {out}/objects/objects.zarr)"
    )
    console.print(
        f"  table and meshes   {out}/objects/objects.csv, {out}/objects/meshes/, preview {out}/objects/preview.png"
    )
    return summary
