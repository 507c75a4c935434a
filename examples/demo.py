"""The main job end to end on a generated phantom: what `make demo` runs.

1. generate a phantom tomogram (about 128x256x256, 4 particle classes) with its ground truth;
2. convert it to OME-Zarr;
3. segment it on an embedded LocalCluster with the small model shipped in the package
   (``tiling="blocks"``: one network call per block; ``--tiling patches`` for DeepFinder's tiling);
4. pick particles and evaluate them against the truth.

Outputs land in ``demo_out/``: the tomogram (MRC and OME-Zarr with its label map), the picks as
DeepFinder XML and RELION STAR, and an orthoslice PNG with the label overlay and the picks.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import tomochunk as tc
from tomochunk._quiet import NativeLogFilter, quiet_libraries


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--outdir", default="demo_out")
    ap.add_argument("--shape", default="128,256,256")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default=None, help="a .keras model (default: the shipped phantom model)")
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--crop", type=int, default=12)
    ap.add_argument("--tiling", default="blocks", choices=["patches", "blocks"],
                    help="segment's tiling: DeepFinder's patches, or one network call per block")
    ap.add_argument("--method", default="cc", choices=["cc", "meanshift"],
                    help="cc: one object per connected component; meanshift: DeepFinder's clustering")
    ap.add_argument("--radius", type=float, default=6.0, help="mean-shift bandwidth, voxels")
    ap.add_argument("--min-size", type=int, default=80, help="smallest object kept, voxels")
    ap.add_argument("-v", "--verbose", action="store_true", help="show Dask and TensorFlow logs")
    args = ap.parse_args(argv)
    # before Dask and TensorFlow are imported: the embedded cluster's workers inherit it
    quiet_libraries(args.verbose)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:
        return _demo(args)
    with NativeLogFilter():
        return _demo(args)


def _demo(args):
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    shape = tuple(int(v) for v in args.shape.split(","))
    print(f"[1/4] phantom tomogram {shape} ...")
    vol, truth, labels = tc.phantom_tomogram(shape, classes=4, seed=args.seed, snr=1.0)
    tc.write_volume(vol, out / "phantom.mrc", voxel_size=truth.attrs["voxel_size"], overwrite=True)
    truth["tomo"] = "phantom"  # the name pick/cluster give the picks of phantom.zarr (tomo_name)
    tc.write_objects(truth, out / "truth.xml")
    print(f"      {len(truth)} particles in {len(truth.attrs['classes'])} classes: "
          + ", ".join(f"{n} ({(truth.class_label == k).sum()})" for k, n in truth.attrs["classes"].items()))

    print("[2/4] convert to OME-Zarr ...")
    store = out / "phantom.zarr"
    stats = tc.convert(out / "phantom.mrc", store, levels=3, overwrite=True, progress=sys.stdout.isatty())
    v = tc.open_volume(store)
    print(f"      {store}: dims {v.dims}, shape {v.shape}, voxel {v.attrs['voxel_size']} Å, "
          f"mean {stats['mean']:.3f}, std {stats['std']:.3f}")

    picks, seg = _segment_and_pick(store, out, args)
    print("[4/4] evaluate against the truth (Hungarian matching within 5 voxels) ...")
    table = tc.evaluate(picks, truth, max_dist=5)
    if "name" not in table:
        names = {str(k): v for k, v in truth.attrs["classes"].items()}
        table.insert(0, "name", [names.get(str(c), "") for c in table.index])
    print(table[["name", "n_truth", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1"]]
          .to_string(float_format=lambda x: f"{x:.3f}"))
    per_class = table.drop(index="all")
    print(f"mean F1 over classes: {per_class['f1'].mean():.3f}")
    tc.write_objects(picks, out / "picks.xml")
    tc.write_objects(picks, out / "picks.star")
    from tomochunk.viz import orthoslices

    png = orthoslices(v, out / "phantom.png", labels=seg, objects=picks, truth=truth,
                      classes=picks.attrs.get("classes") or truth.attrs.get("classes"),
                      title="phantom: predicted labels (overlay), picks (circles) and truth (crosses)")
    print(f"wrote {png}  ({time.perf_counter() - t0:.0f} s in all)")


def _segment_and_pick(store, out, args):
    """Segment with the shipped model on an embedded LocalCluster, then cluster the label map."""
    from tomochunk.parallel import client_context
    from tomochunk.pipeline import shipped_model, shipped_model_info

    model = Path(args.model) if args.model else shipped_model("phantom")
    info = shipped_model_info("phantom") if not args.model else {}
    print(f"[3/4] segment with {model.name} on a LocalCluster of {args.workers} workers ...")
    with client_context(n_workers=args.workers, memory_limit="4GiB") as client:
        print(f"      Dask dashboard: {client.dashboard_link}")
        scores = tc.segment(tc.open_volume(store), model, patch_size=args.patch, crop=args.crop, client=client,
                            tiling=args.tiling)
        tc.write_segmentation(scores, store, client=client, progress=sys.stdout.isatty(), overwrite=True)
        labels = tc.open_volume(store / "labels" / "classes")
        picks = tc.cluster(labels, radius=args.radius, min_size=args.min_size, method=args.method)
    picks["tomo"] = "phantom"
    names = info.get("classes") or {}
    picks.attrs["classes"] = {int(k): v for k, v in names.items()}
    print(f"      {len(picks)} objects picked ({args.method}, min size {args.min_size} voxels)")
    return picks, labels


if __name__ == "__main__":
    main()
