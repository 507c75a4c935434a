#!/usr/bin/env python3
"""Training benchmark: per-class validation F1 over time, and throughput against DeepFinder.

Data: two phantom tomograms (tomochunk.phantom_tomogram, 3 classes: sphere,
shell, rod; one for training, one for validation), written to OME-Zarr for
tomochunk and to HDF5 (``dataset``) for DeepFinder.

Part ``f1``: tomochunk.train with a wall-clock budget (``--minutes``,
default 20); prints the per-class validation F1 after every epoch with the
elapsed time. Target: F1 >= 0.6 for every class within 20 minutes.
Defaults (measured to pass, 2 shared cores): filters 16/24/32, patch 40,
batch 4, shift 8, lr 5e-4, bfloat16, Tversky + 1.0 x cross-entropy, phantom
SNR 2. Measured but not passing: full 32/48/64 filters, patch 48, lr 1e-3,
pure Tversky, SNR 1 stayed on the all-background plateau for 14 minutes.

Part ``speed``: the same network (DeepFinder's, 32/48/64 filters), patch
size, batch size, classes, shift (13), class bootstrap, Adam and Tversky
loss, trained for ``--steps`` steps by tomochunk.train and by DeepFinder's
``Train.launch`` (cryoet-deepfinder 0.2.1 in its own venv, DF_PYTHON,
default /work/venvs/df). Throughput is measured the same way for both:
patches from the end of the first optimiser step to the end of the last
(graph tracing and validation left out). tomochunk is timed in float32 (with
micro-batches of 2 and with the whole batch per call) and in mixed bfloat16.
This machine's speed drifts by tens of percent within minutes, so the runs
alternate for ``--repeat`` rounds and each ratio is to DeepFinder's run of the
same round; the median is reported.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/bench_train.py [--part all|f1|speed]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DF_PYTHON = os.environ.get("DF_PYTHON", "/work/venvs/df/bin/python")
CLASSES = ["sphere", "shell", "rod"]

DF_SCRIPT = r"""
import sys, time, json, csv, numpy as np
from deepfinder.training import Train
data, target, objs, out, ncl, patch, batch, steps = sys.argv[1:9]
ncl, patch, batch, steps = int(ncl), int(patch), int(batch), int(steps)
with open(objs) as f:
    objl = [dict(tomo_idx=0, label=int(r["class_label"]), x=float(r["x"]), y=float(r["y"]),
                 z=float(r["z"]), phi=None, psi=None, the=None) for r in csv.DictReader(f)]
tr = Train(Ncl=ncl, dim_in=patch)
tr.path_out = out + "/"
tr.batch_size, tr.epochs, tr.steps_per_epoch, tr.steps_per_valid = batch, 1, steps, 1
tr.flag_batch_bootstrap = 1
tr.Lrnd = 13
tr.display = lambda *a, **k: None
ends = []
orig = tr.net.train_on_batch
def timed(*a, **k):
    r = orig(*a, **k)
    ends.append(time.perf_counter())
    return r
tr.net.train_on_batch = timed
tr.launch([data], [target], objl, objl)
print(json.dumps({"patches_per_s": (len(ends) - 1) * batch / (ends[-1] - ends[0])}))
"""


def make_data(d: Path, shape, seed=0, snr=1.0):
    import h5py

    import tomochunk

    out = {}
    for i, name in enumerate(("train", "valid")):
        vol, objs, lab = tomochunk.phantom_tomogram(shape, classes=CLASSES, seed=seed + i, tomo=name,
                                                    density=0.2, snr=snr)
        tomochunk.write_volume(vol, d / f"{name}.zarr", levels=1, overwrite=True)
        tomochunk.write_volume(lab, d / f"{name}_lab.zarr", levels=1, overwrite=True)
        with h5py.File(d / f"{name}.h5", "w") as f:
            f["dataset"] = vol
        with h5py.File(d / f"{name}_lab.h5", "w") as f:
            f["dataset"] = lab.astype(np.int8)
        objs.to_csv(d / f"{name}_objs.csv", index=False)
        counts = objs["class_label"].value_counts().sort_index().to_dict()
        print(f"{name}: volume {shape}, objects per class {counts}, "
              f"label voxels per class {np.bincount(lab.ravel(), minlength=4)[1:].tolist()}")
        out[name] = objs
    return out


def part_f1(d, objs, args):
    import tomochunk

    vols = {"train": str(d / "train.zarr"), "valid": str(d / "valid.zarr")}
    tgts = {"train": str(d / "train_lab.zarr"), "valid": str(d / "valid_lab.zarr")}
    print(f"\n== F1 over time: filters {args.filters}, patch {args.f1_patch}, batch {args.batch}, "
          f"{args.steps_per_epoch} steps/epoch, lr {args.lr}, {args.precision}, shift {args.shift}, "
          f"cross-entropy weight {args.ce_weight}, budget {args.minutes} min")
    _, hist = tomochunk.train(vols, tgts, objs["train"], objs["valid"], n_classes=len(CLASSES) + 1,
                              patch_size=args.f1_patch, batch_size=args.batch, epochs=10_000,
                              steps_per_epoch=args.steps_per_epoch, valid_steps=args.valid_steps,
                              lr=args.lr, out_dir=d / "run_f1", filters=args.filters,
                              precision=args.precision, time_limit=args.minutes * 60,
                              checkpoint_every=1000, progress=False, workers=2,
                              ce_weight=args.ce_weight, shift=args.shift)
    names = " ".join(f"F1_{c}({n})" for c, n in enumerate(CLASSES, 1))
    print(f"{'epoch':>5} {'min':>6} {'loss':>7} {'val_loss':>8}  {names}  patches/s")
    for r in hist.itertuples():
        f1 = "  ".join(f"{getattr(r, f'val_f1_{c}'):>{len(n) + 5}.3f}" for c, n in enumerate(CLASSES, 1))
        print(f"{r.epoch:>5} {r.elapsed_s / 60:>6.1f} {r.loss:>7.3f} {r.val_loss:>8.3f}  {f1}  "
              f"{r.patches_per_s:.2f}")
    last = hist.iloc[-1]
    best = {c: hist[f"val_f1_{c}"].max() for c in range(1, len(CLASSES) + 1)}
    ok = all(last[f"val_f1_{c}"] >= 0.6 for c in best)
    print(f"final per-class F1 {[round(float(last[f'val_f1_{c}']), 3) for c in best]} after "
          f"{last.elapsed_s / 60:.1f} min: {'PASS' if ok else 'FAIL'} (>= 0.6 each)")


def _speed_tomochunk(d, objs, args, prec, micro):
    import tomochunk

    _, hist = tomochunk.train({"train": str(d / "train.zarr")}, {"train": str(d / "train_lab.zarr")},
                              objs["train"], objs["train"], n_classes=len(CLASSES) + 1,
                              patch_size=args.patch, batch_size=args.batch, epochs=1,
                              steps_per_epoch=args.speed_steps, valid_steps=1, lr=1e-4,
                              out_dir=d / f"run_speed_{prec}_{micro}", precision=prec, progress=False,
                              legacy_h5=False, micro_batch=micro)
    return float(hist["patches_per_s"].iloc[0]), float(hist["input_wait_s"].iloc[0])


def _speed_deepfinder(d, args):
    import json

    out = d / "run_df"
    out.mkdir(exist_ok=True)
    p = subprocess.run([DF_PYTHON, "-c", DF_SCRIPT, str(d / "train.h5"), str(d / "train_lab.h5"),
                        str(d / "train_objs.csv"), str(out), str(len(CLASSES) + 1), str(args.patch),
                        str(args.batch), str(args.speed_steps)], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError("DeepFinder failed:\n" + p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])["patches_per_s"]


def part_speed(d, objs, args):
    print(f"\n== Throughput: DeepFinder network, patch {args.patch}, batch {args.batch}, "
          f"{args.speed_steps} steps, 4 classes, {args.repeat} alternating rounds")
    have_df = Path(DF_PYTHON).exists()
    if not have_df:
        print(f"DeepFinder venv not found ({DF_PYTHON}): no ratio")
    variants = [("float32", args.micro_batch), ("float32", None), ("bfloat16", args.micro_batch)]
    rates = {v: [] for v in variants}
    ratios = {v: [] for v in variants}
    for r in range(args.repeat):
        if have_df:
            df_rate = _speed_deepfinder(d, args)
            print(f"round {r + 1}: DeepFinder Train {df_rate:.3f} patches/s")
        for prec, micro in variants:
            rate, wait = _speed_tomochunk(d, objs, args, prec, micro)
            rates[(prec, micro)].append(rate)
            line = (f"round {r + 1}: tomochunk {prec:8s} micro-batch {micro or args.batch}: {rate:.3f} "
                    f"patches/s (waited {wait:.1f} s for input)")
            if have_df:
                ratios[(prec, micro)].append(rate / df_rate)
                line += f", {rate / df_rate:.2f}x DeepFinder"
            print(line, flush=True)
    for v in variants:
        med = float(np.median(rates[v]))
        line = f"tomochunk {v[0]:8s} micro-batch {v[1] or args.batch}: median {med:.3f} patches/s"
        if have_df:
            line += (f"; ratio to DeepFinder of the same round: median {np.median(ratios[v]):.2f}x "
                     f"(rounds {', '.join(f'{x:.2f}' for x in ratios[v])}; target >= 1.5x)")
        print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "f1", "speed"], default="all")
    ap.add_argument("--shape", default="96,160,160")
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--patch", type=int, default=48, help="speed part patch size")
    ap.add_argument("--f1-patch", type=int, default=40, help="F1 part patch size")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps-per-epoch", type=int, default=10)
    ap.add_argument("--valid-steps", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--filters", default="16,24,32", help="F1 part filters ('default' = 32,48,64)")
    ap.add_argument("--precision", default="bfloat16")
    ap.add_argument("--speed-steps", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3, help="speed part: alternating rounds")
    ap.add_argument("--micro-batch", type=int, default=2, help="speed part: tomochunk's micro-batch")
    ap.add_argument("--ce-weight", type=float, default=1.0, help="F1 part: cross-entropy term weight")
    ap.add_argument("--shift", type=int, default=8, help="F1 part: random shift of patch centres")
    ap.add_argument("--snr", type=float, default=2.0, help="phantom signal-to-noise ratio")
    ap.add_argument("--workdir", default=None, help="keep the data here (default: a temporary folder)")
    args = ap.parse_args()
    if args.filters not in ("default", "small"):
        args.filters = tuple(int(v) for v in args.filters.split(","))
    shape = tuple(int(v) for v in args.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.workdir or tmp)
        d.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        objs = make_data(d, shape, snr=args.snr)
        print(f"phantoms written in {time.perf_counter() - t:.1f} s")
        if args.part in ("all", "speed"):
            part_speed(d, objs, args)
        if args.part in ("all", "f1"):
            part_f1(d, objs, args)


if __name__ == "__main__":
    sys.exit(main())
