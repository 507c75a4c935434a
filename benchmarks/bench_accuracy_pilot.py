#!/usr/bin/env python3
"""Short accuracy pilots (issue 23): one tomochunk training variant, scored like ``bench_accuracy.py``.

Trains the ``czii`` recipe with ``--kw`` overrides for ``--minutes`` (on the Keras backend of
``--backend``, default ``auto`` as ``tomochunk train``: torch for float32 on a CPU) on the data of
``bench_accuracy.py`` (hard phantom 128x192x192, training half seed 0, held-out half seed 1; made
in ``--workdir``), segments the held-out half with ``model_best.keras`` (blocks, bfloat16, no
TTA) and prints one ``PILOT`` line: optimiser steps, the best picking option's CZII F-beta (the
same list of options as the main benchmark), ``cc`` + size filter, and per-class F1.

Run, one variant after the other on a quiet machine (each gets the same wall clock):

    PYTHONPATH=$PWD:$PWD/benchmarks .venv/bin/python benchmarks/bench_accuracy_pilot.py p24 --patch 24
    ... bench_accuracy_pilot.py p32lr --patch 32 --kw '{"lr": 0.003}'
"""

import argparse
import json
from pathlib import Path

import bench_accuracy as B


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="the variant's name (its model folder: tc_NAME)")
    ap.add_argument("--minutes", type=float, default=7)
    ap.add_argument("--patch", type=int, default=None, help="patch edge (default: the czii recipe's)")
    ap.add_argument("--batch", type=int, default=None, help="patches per step (default: the czii recipe's)")
    ap.add_argument("--kw", default="{}", help="JSON train() keywords over the czii recipe")
    from tomochunk.nn._backend import CHOICES

    ap.add_argument("--backend", default="auto", choices=CHOICES)
    ap.add_argument("--workdir", default="/tmp/acc/data")
    a = ap.parse_args()
    from tomochunk.nn._predict import local_gpu, resolve_precision
    from tomochunk.nn.train import RECIPES

    kw = {**RECIPES["czii"], **json.loads(a.kw)}
    patch = kw.pop("patch_size", 48) if a.patch is None else a.patch
    kw.pop("patch_size", None)
    batch = kw.pop("batch_size", 8) if a.batch is None else a.batch
    kw.pop("batch_size", None)
    args = argparse.Namespace(patch=patch, batch=batch, steps=20, valid_steps=4, backend=a.backend,
                              precision=resolve_precision("auto", gpu=local_gpu()), seed=0,
                              seg_patch=96, crop=16, df_radius=5)
    d = Path(a.workdir)
    d.mkdir(parents=True, exist_ok=True)
    # the phantom is regenerated each run (seconds) rather than cached: nothing read back is unpickled
    objs, radii, names = B.make_data(d, (128, 192, 192), 0)
    objs["names"] = names
    if "filters" in kw:
        kw["filters"] = tuple(kw["filters"])
    out, info = B.train_tomochunk(d, objs, args, a.name, a.minutes, **kw)
    labels, scores, secs = B.segment_tomochunk(d, out / "model_best.keras", args)
    key, _, f1, cz, tried = B.best_pick(labels, objs["test"], radii, B._sizes(out), methods=("cc",),
                                        scores=scores)
    print(f"PILOT {a.name} patch {patch} batch {batch} kw {a.kw} {info['backend']}: {info['steps']} steps, "
          f"seg {secs:.1f}s, "
          f"best {key} F4 {B.fbeta(cz):.3f}; cc+0.25: {tried.get('cc + size filter 0.25 x p5'):.3f}; "
          f"F1 " + " ".join(f"{v:.2f}" for v in f1.values()), flush=True)


if __name__ == "__main__":
    main()
