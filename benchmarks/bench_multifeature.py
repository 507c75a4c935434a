"""Multi-feature segmentation: three 2D one-feature models, alone versus in competition.

A phantom with membrane-like sheets (vesicle shells), filaments and particles
of the same density is generated twice (a training and a test tomogram).
Three 2D U-Nets (membrane, filament, particle) are trained briefly on CPU from
sparse tiles of a few annotated slices (positive tiles with masks, negative
tiles, random rotations and copies). As in Ais, each model's tiles are masked
for its own feature only: half are centred on the feature, half are random
places of the annotated slices (where the other features appear unlabelled),
plus negative tiles from the emptiest places. On the test tomogram each model is
applied slice-wise through the Dask path (``segment_slices``) and
  * thresholded alone (0.5, and its best threshold in hindsight), and
  * in competition (``compete_maps``: thresholded argmax over the three maps).
The script prints per-feature voxel F1 for each.

Run::

    PYTHONPATH=. python benchmarks/bench_multifeature.py [--epochs 8] [--size 48 128 128]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from scipy import ndimage as ndi

FEATURES = ("membrane", "filament", "particle")


def phantom(shape, seed, *, n_vesicles=3, n_filaments=60, n_particles=80, noise=0.4):
    """(tomogram, labels): bilayer shells (1), filaments (2), particles (3), all of density 1, blurred, noisy."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    lab = np.zeros(shape, np.uint8)
    nz, ny, nx = shape
    dens = np.zeros(shape, np.float32)
    for _ in range(n_vesicles):  # sheets: vesicle bilayers, two dense leaflets 4 voxels apart
        r = rng.uniform(0.25, 0.45) * min(ny, nx)
        c = rng.uniform([0, r * 0.5, r * 0.5], [nz, ny - r * 0.5, nx - r * 0.5])
        d = np.abs(np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) - r)
        lab[d <= 2.5] = 1
        dens[(d >= 1.2) & (d <= 2.8)] = 1.0
    for _ in range(n_filaments):  # straight filaments of radius 2 in random directions
        p = rng.uniform([0, 0, 0], shape)
        u = rng.normal(size=3)
        u[0] *= 0.3          # mostly in-plane, as actin in a thin lamella
        u /= np.linalg.norm(u)
        v = np.stack([zz - p[0], yy - p[1], xx - p[2]])
        t = np.tensordot(u, v, axes=1)
        d2 = (v ** 2).sum(0) - t ** 2
        rod = (d2 <= 6.25) & (np.abs(t) < 0.4 * max(shape))
        if not (rod & (lab > 0)).any():  # each voxel has one unambiguous owner
            lab[rod] = 2
    placed = 0
    for _ in range(20 * n_particles):  # ribosome-like balls of radius 3.5-5, not overlapping other objects
        if placed == n_particles:
            break
        r = rng.uniform(3.5, 5.0)
        c = rng.uniform([r, r, r], np.array(shape) - r)
        sl = tuple(slice(int(max(0, ci - r - 2)), int(min(s, ci + r + 3))) for ci, s in zip(c, shape))
        ball = (zz[sl] - c[0]) ** 2 + (yy[sl] - c[1]) ** 2 + (xx[sl] - c[2]) ** 2 <= (r + 1) ** 2
        if lab[sl][ball].any():
            continue
        core = (zz[sl] - c[0]) ** 2 + (yy[sl] - c[1]) ** 2 + (xx[sl] - c[2]) ** 2 <= r * r
        lab[sl][core] = 3
        placed += 1
    dens[lab >= 2] = 1.0
    vol = ndi.gaussian_filter(dens, 0.8)
    vol = vol / vol.max() + rng.normal(scale=noise, size=shape).astype(np.float32)
    return vol.astype(np.float32), lab


def background_tiles(vol, lab, box, slices, n, rng):
    """Negative tiles as a user annotates them: the emptiest places (cytosol, ice) of annotated slices."""
    rng = np.random.default_rng(rng)
    cands = []
    for _ in range(20 * n):
        z = slices[rng.integers(len(slices))]
        y, x = rng.integers(0, vol.shape[1] - box + 1), rng.integers(0, vol.shape[2] - box + 1)
        cands.append((np.count_nonzero(lab[z, y:y + box, x:x + box]), z, y, x))
    cands.sort()
    return np.stack([vol[z, y:y + box, x:x + box] for _, z, y, x in cands[:n]])


def f1(pred, truth):
    tp = np.count_nonzero(pred & truth)
    fp = np.count_nonzero(pred & ~truth)
    fn = np.count_nonzero(~pred & truth)
    return 2 * tp / max(2 * tp + fp + fn, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=3, default=(48, 128, 128))
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--tiles", type=int, default=320, help="training tiles per model")
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--arch", default="unet2d")
    ap.add_argument("--noise", type=float, default=0.4)
    ap.add_argument("--positive-fraction", type=float, default=0.5,
                    help="share of tiles centred on the feature; the rest are random tiles of the annotated "
                         "slices, where the other features appear unlabelled (negatives for this model)")
    ap.add_argument("--dump", default=None, help="save probabilities and truth to this .npz")
    args = ap.parse_args(argv)

    import dask

    from tomochunk.nn.archive import new_model
    from tomochunk.nn.features import compete_maps
    from tomochunk.nn.slices import sample_tiles, segment_slices, train_slices

    shape = tuple(args.size)
    t0 = time.perf_counter()
    train_vol, train_lab = phantom(shape, 1, noise=args.noise)
    test_vol, test_lab = phantom(shape, 2, noise=args.noise)
    print(f"phantom {shape}: {time.perf_counter() - t0:.1f} s; test voxels per feature: "
          + ", ".join(f"{n} {np.count_nonzero(test_lab == i + 1)}" for i, n in enumerate(FEATURES)))
    annotated = list(range(2, shape[0] - 2, 6))  # sparse annotation: every 6th slice
    models = []
    negatives = background_tiles(train_vol, train_lab, args.box, annotated, args.tiles // 3, rng=5)
    for i, name in enumerate(FEATURES):
        t0 = time.perf_counter()
        tiles, masks = sample_tiles(train_vol, train_lab == i + 1, box=args.box, n=args.tiles, slices=annotated,
                                    positive_fraction=args.positive_fraction, rng=10 + i)
        fm = new_model(args.arch, box_size=args.box, title=name, pixel_size=10.0, filters=(8, 16, 32), seed=i)
        hist = train_slices(fm, tiles, masks, negatives=negatives, n_copies=2, excess_negative=0.3,
                            epochs=args.epochs, batch_size=16, learning_rate=2e-3, pixel_size=10.0, seed=i)
        models.append(fm)
        print(f"trained {name:9s} on {len(tiles)} tiles ({int((masks.reshape(len(masks), -1).max(1) > 0).sum())} "
              f"positive): loss {hist.history['loss'][0]:.3f} -> {hist.history['loss'][-1]:.3f}, "
              f"{time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    lazy = [segment_slices(test_vol, fm, pixel_size=10.0, slab=8).data for fm in models]
    probs = np.stack([p[0] for p in dask.compute(*lazy, scheduler="synchronous")])
    print(f"slice-wise inference of 3 models on {shape}: {time.perf_counter() - t0:.1f} s")
    labels = compete_maps(probs, [0.5] * 3)
    if args.dump:
        np.savez_compressed(args.dump, probs=probs, truth=test_lab)

    rows = []
    for i, name in enumerate(FEATURES):
        truth = test_lab == i + 1
        alone = f1(probs[i] >= 0.5, truth)
        best_t, best = max(((t, f1(probs[i] >= t, truth)) for t in np.arange(0.1, 0.96, 0.05)), key=lambda r: r[1])
        comp = f1(labels == i + 1, truth)
        rows.append((name, alone, best, best_t, comp))
    print()
    print(f"{'feature':10s} {'alone@0.5':>10s} {'alone@best':>11s} {'(thr)':>6s} {'competition':>12s} {'vs@0.5':>7s}")
    for name, alone, best, best_t, comp in rows:
        print(f"{name:10s} {alone:10.4f} {best:11.4f} {best_t:6.2f} {comp:12.4f} {comp - alone:+7.4f}")
    ok = all(comp > alone for _, alone, _, _, comp in rows)
    print(f"\ncompetition beats every model thresholded alone at 0.5: {ok}")
    print(f"competition beats every model at its best threshold:     "
          f"{all(comp > best for _, _, best, _, comp in rows)}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
