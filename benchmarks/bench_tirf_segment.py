#!/usr/bin/env python3
"""Segment a TIRF movie with tomochunk and with ExoDeepFinder's ``Segment``, same weights, same run.

ExoDeepFinder (PyPI ``exodeepfinder``, GPL) runs in its own venv as a subprocess; it is never
imported here. Both get the same ``[t, y, x]`` phantom movie and the same random-initialised
anisotropic DeepFinder weights (written as a tf.keras-2-layout ``.h5``, which ExoDeepFinder's
``Segment`` loads). Both normalise every frame to its 1-99 percentiles and use 160-sided patches
with a 25-pixel crop.

Prints both wall times (ExoDeepFinder: ``Segment.launch`` + argmax on an in-memory array, its
file I/O not counted; tomochunk: read from OME-Zarr, segment, write the label map to OME-Zarr),
their ratio, the label-map agreement and the max |score difference| on a slab of frames.

Create the ExoDeepFinder venv once (in the background; it pulls TensorFlow)::

    python3.11 -m venv /work/venvs/exo && /work/venvs/exo/bin/pip install exodeepfinder

Run::

    python benchmarks/bench_tirf_segment.py --shape 1000,300,400 --exo-python /work/venvs/exo/bin/python

Measured (2 cores, 2 workers, --shape 128,300,400, 24 patches of 160^3 each): before the fix in
``segment_movies`` (scores computed once into Zarr) tomochunk took 575.5 s against ExoDeepFinder's
256.7 s (0.45x; label maps agree on 0.999759 of voxels, max |score diff| 4.9e-4): write_volume
computed region by region and re-ran every segmentation block cut by a region. After: 257.9 s,
against ExoDeepFinder's 360.7 s in the same run (1.40x; same agreement figures; ExoDeepFinder's
time varies 257-361 s between runs on this shared machine).
One 160^3 patch takes about 9-11 s in either venv (same Keras 3.15 / TF 2.21), so the network
dominates and the two tile the movie identically.

Full size (2 cores, 2 workers, ``--shape 1000,300,400 --precision bfloat16``, 120 patches):
tomochunk 362.5 s (0.331 Mvox/s, OME-Zarr in, label map and float16 scores out) against
ExoDeepFinder's 1101.7 s (0.109 Mvox/s, in memory, float32) in the same run: 3.04x. Max |score
diff| on frames 0-63 4.9e-4 (the float16 storage step); label maps agree on 0.9945 of voxels,
the rest being near-ties of the untrained network's almost uniform scores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

EXO_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from deepfinder.inference import Segment
    import deepfinder.utils.common as cm
    import deepfinder.utils.smap as sm
    movie, weights, out, patch, slab = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    data = cm.read_array(movie)
    t0 = time.perf_counter()
    seg = Segment(Ncl=3, path_weights=weights, patch_size=patch)
    scores = seg.launch(data, verbose=0)          # [t, y, x, class] float16
    labels = np.argmax(scores, axis=-1).astype(np.uint8)
    dt = time.perf_counter() - t0
    np.save(out + "_labels.npy", labels)
    np.save(out + "_scores.npy", np.moveaxis(scores[:slab], -1, 0))
    print(json.dumps({"seconds": dt}))
""")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1000,300,400")
    ap.add_argument("--patch", type=int, default=160)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--exo-python", default="/work/venvs/exo/bin/python")
    ap.add_argument("--slab", type=int, default=64, help="frames whose scores are compared")
    ap.add_argument("--out", default="/tmp/bench_tirf_segment")
    ap.add_argument("--skip-exo", action="store_true")
    ap.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                    help="tomochunk's network arithmetic (ExoDeepFinder runs float32)")
    ap.add_argument("--tiling", default="patches", choices=("patches", "blocks"),
                    help="tomochunk's tiling (patches: ExoDeepFinder's; blocks: one network call per block)")
    ap.add_argument("--no-scores", dest="scores", action="store_false",
                    help="write only the label map (no score comparison)")
    args = ap.parse_args(argv)

    import keras

    import tomochunk
    from tomochunk.nn.models import deepfinder_unet, save_model
    from tomochunk.ops import tirf
    from tomochunk.parallel import client_context

    shape = tuple(int(s) for s in args.shape.split(","))
    # ExoDeepFinder's Segment pads by 25 and needs one whole patch inside: every side > patch - 50
    # (a 100-frame movie at patch 160 fails there with an IndexError, after tomochunk has run)
    if not args.skip_exo and min(shape) + 2 * 25 <= args.patch:
        raise SystemExit(f"ExoDeepFinder's Segment needs every side > {args.patch - 50} at patch {args.patch}; "
                         f"got {shape} (use --skip-exo, a longer movie or a smaller --patch)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    movie_zarr, movie_h5 = out / "movie.zarr", out / "movie.h5"
    weights_h5, weights_keras = out / "weights.h5", out / "weights.keras"

    with client_context(n_workers=args.workers) as client:
        if not movie_zarr.exists():
            movie, _, _ = tomochunk.phantom_movie(shape, seed=0, voxel_size=1.0, chunks=(64,) + shape[1:])
            import xarray as xr

            tomochunk.write_volume(xr.DataArray(movie, dims=("t", "y", "x"), attrs={"voxel_size": 1.0}),
                                   movie_zarr, levels=1)
        if not movie_h5.exists():
            import h5py

            with h5py.File(movie_h5, "w") as f:
                f["dataset"] = tomochunk.open_volume(movie_zarr).values
        keras.utils.set_random_seed(0)
        net = deepfinder_unet(3, anisotropic=True)
        save_model(net, weights_keras, legacy_h5=weights_h5)
        mvox = np.prod(shape) / 1e6

        # tomochunk: OME-Zarr in, label map out, on the LocalCluster
        t0 = time.perf_counter()
        seg = tirf.segment_movies([movie_zarr], weights_h5, out / "seg", patch_size=args.patch,
                                  overwrite=True, client=client, scores=args.scores,
                                  precision=args.precision, tiling=args.tiling)[str(movie_zarr)]
        ours = time.perf_counter() - t0
        print(f"tomochunk   {ours:8.1f} s  {mvox / ours:6.3f} Mvox/s  ({shape}, patch {args.patch}, "
              f"{args.workers} workers, {args.precision}, tiling {args.tiling}{', label map + float16 scores written' if args.scores else ''})",
              flush=True)
    ours_labels = tomochunk.open_volume(seg).values
    ours_slab = None
    if args.scores:
        ours_slab = np.asarray(tomochunk.open_volume(out / "seg" / "movie_scores.zarr")[:, :args.slab].values,
                               np.float32)

    if args.skip_exo or not Path(args.exo_python).exists():
        print("ExoDeepFinder: not run (no venv at %s); tomochunk time alone" % args.exo_python)
        return
    script = out / "exo_segment.py"
    script.write_text(EXO_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    r = subprocess.run([args.exo_python, str(script), str(movie_h5), str(weights_h5), str(out / "exo"),
                        str(args.patch), str(args.slab)], capture_output=True, text=True, env=env)
    if r.returncode:
        print(r.stderr[-3000:], file=sys.stderr)
        raise SystemExit("ExoDeepFinder run failed")
    exo = json.loads(r.stdout.strip().splitlines()[-1])["seconds"]
    exo_labels = np.load(out / "exo_labels.npy")
    exo_slab = np.load(out / "exo_scores.npy").astype(np.float32)
    print(f"ExoDeepFinder {exo:6.1f} s  {mvox / exo:6.3f} Mvox/s  (Segment.launch, in memory, 1 process)")
    print(f"speed-up tomochunk / ExoDeepFinder: {exo / ours:.2f}x")
    print(f"label maps agree on {np.mean(exo_labels == ours_labels):.6f} of voxels")
    if ours_slab is not None:
        print(f"max |score diff| on frames 0-{args.slab - 1}: {np.abs(exo_slab - ours_slab).max():.2e} "
              f"(both store float16 scores)")


if __name__ == "__main__":
    main()
