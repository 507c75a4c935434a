#!/usr/bin/env python3
"""Sparse labels: positive-unlabeled (nnPU) training against plain Dice + cross-entropy.

A phantom tomogram is generated; 30 % of the particles of class 1 inside one
sub-region (a bounding box, half of the volume by default) are labelled. Both
models get the same heatmap targets (:func:`tomochunk.ops.heatmap.heatmap_targets`,
0 unlabeled / 1 hard / 2 soft-ignored), the same labelled region, the same
patches (same seed, streamed from Zarr), the same small U-Net and the same
number of optimiser steps on CPU. They differ only in how unlabeled voxels are
treated: Dice+CE (``dice_ce``) and the class-balanced sigmoid loss
(``pn_balanced``, the ablation) take them as background; nnPU (``pu``) and its
class-balanced form (``pu_balanced``, same weighting as ``pn_balanced``) as
unlabeled with class prior ``tau``. The particle probability of the whole volume is decoded with
:func:`tomochunk.ops.heatmap.decode_heatmap` and scored with Hungarian matching
against ALL class-1 particles of the volume (F1 at the fixed threshold, and the
best F1 over thresholds).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pu.py [--steps 150] [--batch 4] [--fraction 0.3] \
        [--variants dice_ce,pn_balanced,pu,pu_balanced] [--dir D [--reuse]]
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="48,128,128")
    ap.add_argument("--steps", type=int, default=150, help="optimiser steps per model")
    ap.add_argument("--epochs", type=int, default=1, help="the steps are split into this many epochs")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--fraction", type=float, default=0.3, help="fraction of the region's particles labelled")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--snr", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--smooth", type=float, default=2.0, help="decode_heatmap smooth (Gaussian sigma)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--variants", default="dice_ce,pn_balanced,pu,pu_balanced")
    ap.add_argument("--reuse", action="store_true", help="evaluate the models already trained in --dir")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import keras

    from tomochunk.io.volume import write_volume
    from tomochunk.nn.pu import NNPULoss
    from tomochunk.nn.train import train
    from tomochunk.ops.evaluate import evaluate
    from tomochunk.ops.heatmap import decode_heatmap, heatmap_targets
    from tomochunk.phantom import phantom_tomogram

    shape = tuple(int(s) for s in args.shape.split(","))
    radius = 5.0
    vol, objs, _ = phantom_tomogram(shape, classes=[("sphere", radius), ("rod", 6.0)], snr=args.snr,
                                    seed=args.seed)
    truth = objs[objs["class_label"] == 1].reset_index(drop=True)
    # labelled region: the half x < X/2 (full z, y)
    box = ((0, shape[0]), (0, shape[1]), (0, shape[2] // 2))
    in_box = truth["x"].to_numpy() < box[2][1]
    rng = np.random.default_rng(args.seed)
    idx = np.flatnonzero(in_box)
    n_lab = max(1, int(round(args.fraction * len(idx))))
    lab_objs = truth.iloc[np.sort(rng.choice(idx, n_lab, replace=False))].reset_index(drop=True)
    sigma = radius / 2
    heat, lab = heatmap_targets(lab_objs, shape, sigma=sigma, soft=0.1, hard=0.5, chunks=64)
    lab_np = lab.compute()
    # class prior: a user who labelled ~fraction of the region's particles knows there are
    # ~n_lab / fraction of them; each contributes as many positive voxels as a hard blob
    hard_per = float((lab_np == 1).sum()) / n_lab
    region_vox = np.prod([b - a for a, b in box])
    tau = (n_lab / args.fraction - n_lab) * hard_per / (region_vox - (lab_np[tuple(slice(a, b) for a, b in box)] > 0).sum())
    print(f"phantom {shape}, snr {args.snr}: {len(truth)} class-1 particles ({int(in_box.sum())} in the region), "
          f"{n_lab} labelled; tau = {tau:.4f}")

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_pu_"))
    work.mkdir(parents=True, exist_ok=True)
    write_volume(vol, work / "tomo.zarr", voxel_size=10.0, chunks=64, overwrite=True)
    write_volume(lab_np, work / "targets.zarr", voxel_size=10.0, chunks=64, overwrite=True, label=True)

    x = (vol - vol.mean()) / vol.std()
    results = {}
    steps_per_epoch = max(1, args.steps // args.epochs)
    # pn_balanced: the class-balanced loss of pu_balanced with tau -> 0, i.e. unlabeled taken as
    # negative: the ablation that isolates the PU correction from the class weighting
    variants = {"dice_ce": "dice_ce", "pn_balanced": NNPULoss(tau=1e-6, balanced=True),
                "pu": NNPULoss(tau=tau), "pu_balanced": NNPULoss(tau=tau, balanced=True)}
    for name in args.variants.split(","):
        loss = variants[name]
        keras.utils.set_random_seed(args.seed)
        t = time.perf_counter()
        final = work / name / "model_final.keras"
        if args.reuse and final.exists():
            import pandas as pd

            from tomochunk.nn.models import load_model

            model, hist = load_model(final), pd.read_csv(work / name / "history.csv")
        else:
            model, hist = train({"0": str(work / "tomo.zarr")}, {"0": str(work / "targets.zarr")}, lab_objs,
                                lab_objs, n_classes=2, patch_size=args.patch, batch_size=args.batch,
                                epochs=args.epochs, steps_per_epoch=steps_per_epoch, valid_steps=1, lr=args.lr,
                                out_dir=work / name, filters=(16, 24, 32), shift=args.patch // 2,
                                checkpoint_every=10 ** 6, workers=1, seed=args.seed, legacy_h5=False,
                                progress=False, region=box, loss=loss)
        print(hist.drop(columns=[c for c in hist.columns if "_0" in c]).round(4).to_string(index=False))
        t_train = time.perf_counter() - t
        prob = np.asarray(model.predict(x[None, ..., None].astype(np.float32), verbose=0))[0, ..., 1]
        # NMS at a low threshold then a cut gives the same picks as NMS at the higher one
        low = decode_heatmap(prob, threshold=0.05, min_distance=radius, border=2, smooth=args.smooth)
        picks = low[low["score"] >= args.threshold]
        ev = evaluate(picks, truth, max_dist=radius, method="hungarian")
        best = (0.0, None)
        for thr in np.round(np.arange(0.05, 1.0, 0.05), 2):
            p = low[low["score"] >= thr]
            f = float(evaluate(p, truth, max_dist=radius, method="hungarian").loc["all", "f1"]) if len(p) else 0.0
            best = max(best, (f, thr), key=lambda b: b[0])
        row = ev.loc["all"]
        results[name] = (float(row["f1"]), best)
        print(f"{name:11s} train {t_train:6.1f} s, final loss {hist['loss'].iloc[-1]:.4f}; "
              f"@{args.threshold}: {int(row['n_pred'])} picks, P {row['precision']:.3f} R {row['recall']:.3f} "
              f"F1 {row['f1']:.3f}; best F1 {best[0]:.3f} @ {best[1]}; max prob {prob.max():.3f}")
    fd, bd = results.get("dice_ce", (float("nan"), (float("nan"), None)))
    for name in [n for n in results if n.startswith("pu")]:
        fp, bp = results[name]
        print(f"F1 (all {len(truth)} class-1 particles, Hungarian, max_dist {radius}): "
              f"{name} {fp:.3f} vs Dice+CE {fd:.3f} at threshold {args.threshold} (ratio "
              f"{fp / fd if fd else float('inf'):.2f}); best over thresholds {name} {bp[0]:.3f} vs Dice+CE "
              f"{bd[0]:.3f}; {name} beats Dice+CE: {fp > fd}")


if __name__ == "__main__":
    main()
