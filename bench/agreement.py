"""Do the inference runtimes and tile overlaps change the masks of real data?

For each run (one per dataset, see docs/speed.md for how they were trained) this segments the
dataset's test split with today's path (eager PyTorch, the run's precision, overlap 0.25) and
with each candidate, and prints the pixel agreement with today's masks and the change of the
metrics (accuracy, mean IoU and BF1 of the class of interest, mean over test images).

    python bench/agreement.py RUN:DATA [RUN:DATA ...]
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

CANDIDATES = [
    ("torch (BN folded, channels-last)", {"runtime": "torch"}),
    ("torch fp32 (today without bf16)", {"runtime": "torch", "bf16": False}),
    ("openvino", {"runtime": "openvino"}),
    ("onnxruntime", {"runtime": "onnxruntime"}),
    ("torch, overlap 0.125", {"runtime": "torch", "overlap": 0.125}),
    ("openvino, overlap 0.125", {"runtime": "openvino", "overlap": 0.125}),
    (
        "openvino, tiles 512, overlap 0.125",
        {"runtime": "openvino", "tile_size": 512, "overlap": 0.125},
    ),
    (
        "openvino, tiles 1024, overlap 1/16",
        {"runtime": "openvino", "tile_size": 1024, "overlap": 0.0625},
    ),
]
if len(sys.argv) > 1 and sys.argv[1] == "--only-first":
    sys.argv.pop(1)
    CANDIDATES = CANDIDATES[:1]


def metrics(truth, preds, classes, coi):
    import tomoseg

    rows = [
        tomoseg.score(t, p, classes=classes, class_of_interest=coi)
        for t, p in zip(truth, preds, strict=True)
    ]
    return {
        "accuracy": float(np.mean([r["mean"]["accuracy"] for r in rows])),
        "iou": float(np.nanmean([r["mean"]["iou"][coi] for r in rows])),
        "bf1": float(np.nanmean([r["mean"]["bf1"][coi] for r in rows])),
    }


def main() -> None:
    from tomoseg.inference import runtimes
    from tomoseg.inference.predictor import Predictor
    from tomoseg.io.datasets import split_pairs
    from tomoseg.io.images import read_image, read_mask
    from tomoseg.runtime.checkpoint import load_run

    warnings.simplefilter("ignore")
    for arg in sys.argv[1:]:
        run_dir, data = arg.split(":")
        run = load_run(run_dir)
        pairs = split_pairs(data, "test")
        images = [read_image(p.image) for p in pairs]
        truth = [read_mask(p.mask, len(run.classes)) for p in pairs]
        runtimes.FOLD_TORCH_CPU = False  # the path before: the model as it is, argmax
        torch_path = Predictor(run, runtime="torch")
        ref = [torch_path.segment(im)[0] for im in images]
        runtimes.FOLD_TORCH_CPU = True
        m0 = metrics(truth, ref, run.classes, run.class_of_interest)
        n = sum(r.size for r in ref)
        print(
            f"{data.rstrip('/').split('/')[-1]} ({len(images)} test slices, {n} px): today "
            f"accuracy {m0['accuracy']:.4f} IoU {m0['iou']:.4f} BF1 {m0['bf1']:.4f}"
        )
        for name, kw in CANDIDATES:
            kw = dict(kw)
            runtime = kw.pop("runtime", "auto")
            candidate = Predictor(run, runtime=runtime)
            preds = [candidate.segment(im, **kw)[0] for im in images]
            agree = sum(int((p == r).sum()) for p, r in zip(preds, ref, strict=True)) / n
            m = metrics(truth, preds, run.classes, run.class_of_interest)
            d = {k: m[k] - m0[k] for k in m}
            print(
                f"  {name:26s} agreement {agree:.5%}  d accuracy {d['accuracy']:+.4f}  "
                f"d IoU {d['iou']:+.4f}  d BF1 {d['bf1']:+.4f}"
            )


if __name__ == "__main__":
    main()
