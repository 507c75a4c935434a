"""The ``tomochunk`` command: a thin layer that parses arguments and calls the public API.

Errors from bad input are printed as one line and exit with status 2; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap

from .errors import TomochunkError, ValueProblem


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tomochunk",
        description="Out-of-core cryo-ET / TIRF segmentation and particle picking.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'tomochunk COMMAND --help' for each command's options and an example.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _COMMANDS:
        add(sub)
    return p


def _command(sub, name: str, help: str, example: str):
    return sub.add_parser(name, help=help, description=help,
                          epilog="example:\n" + textwrap.indent(example.strip(), "  "),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _progress():
    """A Dask progress bar for computations run from the CLI."""
    from dask.diagnostics import ProgressBar

    return ProgressBar()


# --- convert -----------------------------------------------------------------

def _add_convert(sub):
    p = _command(sub, "convert", "convert MRC/HDF5/TIFF/Zarr volumes or TIFF-frame folders to OME-Zarr",
                 "tomochunk convert tomo1.mrc tomo2.rec movie_frames/ -o zarr/ --levels 3")
    p.add_argument("inputs", nargs="+", metavar="IN")
    p.add_argument("-o", "--outdir", required=True)
    p.add_argument("--chunks", type=_ints, default=None, help="storage chunks, e.g. 256 or 64,512,512")
    p.add_argument("--levels", type=int, default=3, help="multiscale levels (1x, 2x, 4x, ...)")
    p.add_argument("--dataset", default=None, help="HDF5 dataset name")
    p.add_argument("--compression", choices=("auto", "on", "off"), default="auto",
                   help="auto: store noisy float data raw when a sample compresses < 1.15x (default)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="convert inputs whose metadata marks them as label maps (with a warning)")
    p.set_defaults(run=_run_convert)


def _run_convert(args):
    from pathlib import Path

    from .io.convert import convert, output_name

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for src in args.inputs:
        dst = out / output_name(src)
        convert(src, dst, chunks=args.chunks, levels=args.levels, overwrite=args.overwrite,
                dataset=args.dataset, progress=True, force=args.force,
                compression={"auto": "auto", "on": True, "off": False}[args.compression])
        print(f"{src} -> {dst}")

# --- target ------------------------------------------------------------------

def _add_target(sub):
    p = _command(sub, "target", "build a training label map (spheres or shapes) from an object list",
                 "tomochunk target objects.xml --like tomo1.zarr --radii 1:5,2:8 -o tomo1_target.zarr\n"
                 "tomochunk target objects.xml --shape 200,512,512 --masks 1:ribo.mrc -o target.zarr")
    p.add_argument("objects", help="object list (xml, csv, star, ...)")
    p.add_argument("-o", "--output", required=True, help="output label map (.zarr, .mrc or .h5)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--shape", type=_ints, help="label map shape z,y,x")
    g.add_argument("--like", help="take the shape (and voxel size) from this volume")
    g2 = p.add_mutually_exclusive_group(required=True)
    g2.add_argument("--radii", help="sphere radius per class, 'label:r,...' or 'r1,r2,...' (class 1, 2, ...)")
    g2.add_argument("--masks", help="binary mask per class, 'label:file,...' (any volume format)")
    p.add_argument("--initial", help="volume to start from (e.g. membrane labels); objects overwrite it")
    p.add_argument("--tomo", help="use only the objects of this tomogram")
    p.add_argument("--chunks", type=_ints, default=None, help="block size, e.g. 256 or 64,256,256")
    p.add_argument("--no-rotate", action="store_true", help="ignore the objects' Euler angles")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_run_target)


def _per_class_arg(text, convert):
    items = [t for t in text.split(",") if t]
    if all(":" in t for t in items):
        return {int(k): convert(v) for k, v in (t.split(":", 1) for t in items)}
    return [convert(t) for t in items]


def _run_target(args):
    import numpy as np

    from . import open_volume, read_objects, write_volume
    from .targets import shapes, spheres

    objs = read_objects(args.objects)
    voxel_size = objs.attrs.get("voxel_size")
    if args.like:
        like = open_volume(args.like)
        shape, voxel_size = like.shape, like.attrs.get("voxel_size", voxel_size)
    else:
        shape = (args.shape,) * 3 if isinstance(args.shape, int) else args.shape
    initial = open_volume(args.initial).data if args.initial else None
    common = dict(chunks=args.chunks, initial=initial, tomo=args.tomo, rotate=not args.no_rotate)
    if args.radii:
        lab = spheres(objs, shape, _per_class_arg(args.radii, float), **common)
    else:
        masks = _per_class_arg(args.masks, lambda f: np.asarray(open_volume(f).data))
        lab = shapes(objs, shape, masks, **common)
    with _progress():
        write_volume(lab, args.output, voxel_size=voxel_size, overwrite=args.overwrite, label=True)
    print(f"{args.objects} -> {args.output} {tuple(lab.shape)} {lab.dtype}")


# --- train -------------------------------------------------------------------

def _add_train(sub):
    p = _command(sub, "train", "train the DeepFinder U-Net on volumes, label maps and object lists",
                 "tomochunk train --volumes t1.zarr t2.zarr --targets t1_lab.zarr t2_lab.zarr \\\n"
                 "    --train objl_train.xml --valid objl_valid.xml --n-classes 4 --patch 48 \\\n"
                 "    --epochs 50 --steps 100 -o run1/\n"
                 "tomochunk train --volumes t1.zarr --targets t1_heat.zarr --train labelled.csv "
                 "--valid labelled.csv \\\n    --n-classes 2 --loss pu --tau 0.02 --region 0:96,0:256,0:128 -o pu1/")
    p.add_argument("--volumes", nargs="+", required=True, help="tomograms (or movies), any format")
    p.add_argument("--targets", nargs="+", required=True, help="label maps, same order as --volumes")
    p.add_argument("--train", required=True, help="object list of training objects")
    p.add_argument("--valid", required=True, help="object list of validation objects")
    p.add_argument("--n-classes", type=int, required=True, help="classes including background")
    p.add_argument("-o", "--outdir", required=True)
    p.add_argument("--patch", type=_ints, default=48, help="patch size, multiple of 4 (default 48)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=50, help="steps per epoch")
    p.add_argument("--valid-steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--model", help="start from this model (.keras or DeepFinder .h5)")
    p.add_argument("--filters", default="default", help="'default' (32,48,64), 'small' or a,b,c")
    p.add_argument("--anisotropic", action="store_true", help="movie variant, pooling (1,2,2)")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTDIR")
    p.add_argument("--workers", type=int, default=2, help="threads preparing patches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ce-weight", type=float, default=0.0,
                   help="add cross-entropy with this weight to the Tversky loss (default 0)")
    p.add_argument("--bf16", action="store_true",
                   help="mixed bfloat16 precision (3-4x faster on CPUs with AMX/AVX512-BF16)")
    p.add_argument("--micro-batch", type=int, default=2,
                   help="patches per network call within a step (0: the whole batch); the loss is "
                        "still over the whole batch (default 2, the fastest on CPUs)")
    p.add_argument("--loss", choices=("tversky", "dice_ce", "pu", "pu_balanced"), default="tversky",
                   help="tversky (DeepFinder), dice_ce, or pu: non-negative positive-unlabeled loss for "
                        "sparse labels (targets 0 unlabeled, 1 positive, 2 ignored; needs --tau); "
                        "pu_balanced: its class-balanced variant")
    p.add_argument("--tau", type=float, default=None,
                   help="pu: class prior, the fraction of positive voxels among unlabeled ones")
    p.add_argument("--region", type=_box, default=None,
                   help="labelled sub-region z0:z1,y0:y1,x0:x1 (voxels): patches stay inside it and voxels "
                        "outside are ignored (dice_ce, pu)")
    p.set_defaults(run=_run_train)


def _box(text: str):
    from .errors import ValueProblem

    try:
        box = tuple(tuple(int(v) for v in part.split(":")) for part in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 3 or any(len(b) != 2 or b[0] >= b[1] for b in box):
        raise ValueProblem(f"region must be z0:z1,y0:y1,x0:x1 with each start < end, not {text!r}")
    return box


def _run_train(args):
    from pathlib import Path

    from . import read_objects, train
    from .errors import ValueProblem

    if len(args.volumes) != len(args.targets):
        raise ValueProblem(f"{len(args.volumes)} volumes but {len(args.targets)} targets")
    otrain, ovalid = read_objects(args.train), read_objects(args.valid)
    # Key volumes by file stem when the object lists name tomograms that way, else by index.
    stems = [Path(v).name.split(".")[0] for v in args.volumes]
    names = set()
    for o in (otrain, ovalid):
        if "tomo" in o.columns:
            names |= set(o["tomo"].astype(str))
    keys = stems if names and names <= set(stems) else [str(i) for i in range(len(args.volumes))]
    filters = args.filters if args.filters in ("default", "small") else _ints(args.filters)
    _, hist = train(dict(zip(keys, args.volumes)), dict(zip(keys, args.targets)), otrain, ovalid,
                    n_classes=args.n_classes, patch_size=args.patch, batch_size=args.batch,
                    epochs=args.epochs, steps_per_epoch=args.steps, valid_steps=args.valid_steps,
                    lr=args.lr, out_dir=args.outdir, model=args.model, filters=filters,
                    anisotropic=args.anisotropic, checkpoint_every=args.checkpoint_every,
                    resume=args.resume, workers=args.workers, seed=args.seed,
                    precision="bfloat16" if args.bf16 else "float32", ce_weight=args.ce_weight,
                    micro_batch=args.micro_batch or None,
                    **({"loss": args.loss, "tau": args.tau, "region": args.region}
                       if args.loss != "tversky" or args.region is not None else {}))
    last = hist.iloc[-1]
    f1 = ", ".join(f"{c}: {last[f'val_f1_{c}']:.3f}" for c in range(1, args.n_classes))
    print(f"trained {int(last['epoch'])} epochs -> {args.outdir}/model_final.keras; validation F1 {f1}")


# --- phantom -----------------------------------------------------------------

def _add_phantom(sub):
    p = _command(sub, "phantom", "generate a synthetic tomogram (or TIRF movie) with its labels and object list",
                 "tomochunk phantom tomo.zarr --shape 128,256,256 --classes 4 --snr 0.5 --seed 0 "
                 "--objects truth.csv\n"
                 "tomochunk phantom movie.zarr --movie --shape 300,256,256 --objects events.csv")
    p.add_argument("out", metavar="OUT", help="output volume: .mrc, .h5 or .zarr")
    p.add_argument("--labels", default=None,
                   help="label map output (default: truth/NAME_labels.EXT beside OUT, apart from the tomograms)")
    p.add_argument("--objects", default=None, help="object list output (default: truth/NAME_objects.csv)")
    p.add_argument("--movie", action="store_true", help="a TIRF-like [t,y,x] movie instead of a tomogram")
    p.add_argument("--shape", type=_ints, default=None,
                   help="z,y,x (or t,y,x) size (default 128,256,256; movies 300,256,256)")
    p.add_argument("--classes", type=_classes, default=None,
                   help="number of shape classes, or names such as sphere,rod:6 (name:size in voxels)")
    p.add_argument("--n-objects", type=int, default=None, help="number of particles (default: from --density)")
    p.add_argument("--density", type=float, default=0.15, help="fraction of the volume the particles fill")
    p.add_argument("--snr", type=_float_or_none, default=None,
                   help="signal-to-noise ratio, or 'none' (default 1 for tomograms, 4 for movies)")
    p.add_argument("--missing-wedge", type=_float_or_none, default=60.0,
                   help="tilt range in ± degrees, or 'none' (default 60)")
    p.add_argument("--n-spots", type=int, default=None, help="movies: diffusing spots")
    p.add_argument("--n-events", type=int, default=None, help="movies: exocytosis events")
    p.add_argument("--voxel-size", type=float, default=None, help="Å per voxel (default 10; movies 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunks", type=_ints, default=None,
                   help="generate and store by blocks of this size (automatic above 512 MB)")
    p.add_argument("--levels", type=int, default=3, help="multiscale levels of Zarr outputs")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_run_phantom)


def _run_phantom(args):
    from pathlib import Path

    import numpy as np
    import xarray as xr

    from .errors import ExistsError
    from .io.objects import write_objects
    from .io.volume import write_volume
    from ._names import tomo_name
    from .phantom import phantom_movie, phantom_tomogram

    out = Path(args.out)
    suffix = ".zarr" if out.suffix.lower() == ".zarr" else out.suffix
    # the truth goes apart from the tomograms (truth/), so `*.mrc`/`*.zarr` globs never take a label map
    stem = out.name[:-len(suffix)] if suffix and out.name.lower().endswith(suffix.lower()) else out.stem
    labels = Path(args.labels) if args.labels else out.parent / "truth" / (stem + "_labels" + suffix)
    objects = Path(args.objects) if args.objects else out.parent / "truth" / (stem + "_objects.csv")
    for path in (out, labels, objects):
        if path.exists() and not args.overwrite:
            raise ExistsError("output exists; pass --overwrite to replace it", path)
    shape = args.shape or ((300, 256, 256) if args.movie else (128, 256, 256))
    if isinstance(shape, int) or len(shape) != 3:
        raise ValueProblem(f"--shape needs three sizes, got {args.shape}")
    chunks = args.chunks
    if chunks is None and np.prod(shape, dtype=np.int64) * 4 > 512 * 2**20:
        chunks = (64, 512, 512) if args.movie else 256
    snr = args.snr if args.snr is not None else (4.0 if args.movie else 1.0)
    if args.snr is not None and args.snr == "none":
        snr = None
    if args.movie:
        vs = args.voxel_size or 100.0
        vol, obj, lab = phantom_movie(shape, n_spots=args.n_spots, n_events=args.n_events, seed=args.seed,
                                      snr=snr, voxel_size=vs, chunks=chunks)
        dims = ("t", "y", "x")
    else:
        vs = args.voxel_size or 10.0
        wedge = None if args.missing_wedge == "none" else args.missing_wedge
        vol, obj, lab = phantom_tomogram(shape, args.classes, n_objects=args.n_objects, density=args.density,
                                         snr=snr, missing_wedge=wedge, voxel_size=vs, seed=args.seed,
                                         chunks=chunks)
        dims = ("z", "y", "x")
    vol = xr.DataArray(vol, dims=dims, attrs={"voxel_size": vs})
    lab = xr.DataArray(lab, dims=dims, attrs={"voxel_size": vs})
    kw = dict(voxel_size=vs, overwrite=args.overwrite)
    if suffix == ".zarr":
        kw.update(levels=args.levels, chunks=chunks)
    with _progress():
        write_volume(vol, out, **kw)
        write_volume(lab, labels, label=True, **kw)
    objects.parent.mkdir(parents=True, exist_ok=True)
    obj["tomo"] = tomo_name(out)  # the name `pick` gives the picks of this volume, so `evaluate` pairs them
    write_objects(obj, objects)
    counts = ", ".join(f"{obj.attrs['classes'].get(k, k)}: {n}"
                       for k, n in sorted(obj.class_label.value_counts().items()))
    print(f"{out}: {'x'.join(map(str, shape))}, {len(obj)} objects ({counts})")
    print(f"labels -> {labels}, objects -> {objects}")


def _classes(text: str):
    if text.isdigit():
        return int(text)
    out = []
    for item in text.split(","):
        name, _, size = item.partition(":")
        out.append((name.strip(), float(size)) if size else name.strip())
    return out


def _float_or_none(text: str):
    return "none" if text.lower() in ("none", "off", "inf") else float(text)


# --- pick --------------------------------------------------------------------

_PICK_METHODS = {"cc": "cc", "meanshift": "meanshift", "peaks": "peaks", "centroid": "centroid",
                 "heatmap": "heatmap", "nms": "nms"}


def _add_pick(sub):
    p = _command(sub, "pick", "turn label maps (cc, meanshift) or score maps (peaks, centroid, heatmap) "
                 "into one object list",
                 "tomochunk pick seg/tomo1.zarr seg/tomo2.zarr --method meanshift --radius 5 -o objects.xml\n"
                 "tomochunk pick scores.zarr --method peaks --threshold 0.5 --min-spacing 80 "
                 "--units angstrom -o picks.star")
    p.add_argument("inputs", nargs="+", metavar="LABELS_OR_SCORES",
                   help="segmentation stores (labels/classes, labels/scores inside), zarr arrays or MRC files")
    p.add_argument("-o", "--output", required=True, help="objects.{xml,star,csv,json,...}")
    p.add_argument("--method", choices=sorted(_PICK_METHODS), default="meanshift")
    p.add_argument("--radius", type=float, default=5.0, help="mean-shift bandwidth in voxels (cc/meanshift)")
    p.add_argument("--threshold", type=float, default=0.5, help="score threshold (score maps)")
    p.add_argument("--min-size", type=float, default=1, help="smallest object (voxels, or A^3 with --units angstrom)")
    p.add_argument("--min-spacing", type=float, default=5.0, help="smallest distance between picks")
    p.add_argument("--margin", type=float, default=0.0, help="drop picks this close to the border")
    p.add_argument("--top-k", type=int, default=None, help="keep the K best picks per class and tomogram")
    p.add_argument("--classes", type=_ints, default=None, help="classes to keep, e.g. 1,3")
    p.add_argument("--units", choices=("voxel", "angstrom"), default="voxel")
    p.add_argument("--voxel-size", type=float, default=None, help="A per voxel (default: from the input)")
    p.add_argument("--level", type=int, default=0, help="multiscale level of OME-Zarr inputs")
    p.add_argument("--z-range", type=_z_range, default=None,
                   help="heatmap: keep picks with ZMIN <= z <= ZMAX (voxels), e.g. 20,180")
    p.add_argument("--border", type=float, default=0.0,
                   help="heatmap: drop picks this close to any face (like --margin)")
    p.add_argument("--smooth", type=float, default=0.0,
                   help="heatmap: Gaussian sigma (voxels) before the NMS; centres picks on saturated maps")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_run_pick)


def _z_range(text: str):
    lo, _, hi = text.partition(",")
    return (float(lo) if lo.strip() else None, float(hi) if hi.strip() else None)


def _run_pick(args):
    import pandas as pd

    from .io.objects import write_objects
    from .ops.pick import pick_inputs

    frames = []
    for src in args.inputs:
        df = pick_inputs(src, method=_PICK_METHODS[args.method], radius=args.radius, threshold=args.threshold,
                         min_size=args.min_size, min_spacing=args.min_spacing, margin=args.margin,
                         top_k=args.top_k, classes=args.classes, units=args.units,
                         voxel_size=args.voxel_size, level=args.level,
                         **({"z_range": args.z_range, "border": args.border, "smooth": args.smooth} if args.method == "heatmap" else {}))
        print(f"{src}: {len(df)} objects")
        frames.append(df)
    # one list holds one voxel size (and a STAR file one shape per list): mixed inputs would be mislabelled
    sizes = {str(src): df.attrs.get("voxel_size") for src, df in zip(args.inputs, frames)}
    if len({v for v in sizes.values() if v is not None}) > 1:
        from .errors import ValueProblem

        listed = ", ".join(f"{k}: {v:g} Å" for k, v in sizes.items() if v is not None)
        raise ValueProblem(f"inputs have different voxel sizes ({listed}); one object list holds one voxel "
                           "size: pick them into separate files, or pass --voxel-size", args.output)
    out = pd.concat(frames, ignore_index=True)
    out.attrs = dict(frames[0].attrs)
    if len({tuple(df.attrs.get("shape") or ()) for df in frames}) > 1:
        out.attrs.pop("shape", None)  # centred STAR coordinates need each tomogram's own shape
    out["obj_id"] = range(1, len(out) + 1)
    write_objects(out, args.output, overwrite=args.overwrite)
    print(f"{len(out)} objects -> {args.output}")


# --- segment -----------------------------------------------------------------

def _add_segment(sub):
    p = _command(sub, "segment", "segment tomograms with a 3D U-Net on a Dask cluster; write score and "
                 "label maps into each tomogram's OME-Zarr store (labels/scores, labels/classes)",
                 "tomochunk segment tomo1.mrc tomo2.zarr -m net_weights_FINAL.h5 -o zarr/ --patch 160 --workers 2\n"
                 "tomochunk segment zarr/*.zarr -m unet.keras -o zarr/ --scheduler tcp://head:8786")
    p.add_argument("inputs", nargs="+", metavar="TOMO", help="tomograms (MRC, HDF5, TIFF, Zarr)")
    p.add_argument("-m", "--model", required=True, help="network: .keras, or DeepFinder .h5 weights")
    p.add_argument("-o", "--outdir", required=True, help="folder of OME-Zarr stores (<name>.zarr)")
    p.add_argument("--patch", type=int, default=160, help="patch side in voxels (default 160)")
    p.add_argument("--crop", type=int, default=25, help="voxels discarded per patch side (default 25)")
    p.add_argument("--batch", type=int, default=None, help="patches per network call (default: auto)")
    p.add_argument("--blend", choices=("crop", "gaussian"), default="crop",
                   help="average overlapping cores (DeepFinder) or Gaussian-weight them")
    p.add_argument("--tiling", choices=("patches", "blocks"), default="patches",
                   help="patches: DeepFinder's patch tiling (its scores); blocks: one network call per "
                        "block plus a halo of --crop voxels, about 4x less work (default: patches)")
    p.add_argument("--block", type=_ints, default=None, metavar="N|Z,Y,X",
                   help="block sides for --tiling blocks (default: sized to the workers' memory)")
    p.add_argument("--normalize", choices=("meanstd", "percentile", "none"), default="meanstd",
                   help="intensity normalisation before segmenting (default: global mean/std)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="score storage dtype")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="network arithmetic; bfloat16 is ~4.5x faster on CPUs with AMX/AVX512-BF16 and GPUs")
    p.add_argument("--chunks", type=int, default=256, help="storage chunk side of the outputs")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.add_argument("--workers", type=int, default=None, help="worker processes of the embedded cluster")
    p.add_argument("--dataset", default=None, help="HDF5 dataset name")
    p.add_argument("--overwrite", action="store_true", help="redo tomograms that are already segmented")
    p.add_argument("--force", action="store_true",
                   help="segment inputs whose metadata marks them as label maps (with a warning)")
    p.set_defaults(run=_run_segment)


def _run_segment(args):
    from pathlib import Path

    from .io.convert import convert, output_name
    from .io.omezarr import is_complete
    from .io.volume import open_volume
    from .nn.segment import segment, write_segmentation
    from .parallel import client_context

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    model = str(Path(args.model).resolve())
    if not Path(model).exists():
        from .errors import MissingError

        raise MissingError("no such model file", args.model)
    todo = []
    for src in args.inputs:
        dst = out / output_name(src)
        labels = dst / "labels"
        if not args.overwrite and all((labels / n).exists() and is_complete(labels / n)
                                      for n in ("scores", "classes")):
            print(f"{src}: already segmented in {labels}, skipped")
            continue
        todo.append((src, dst))
    if not todo:
        return 0
    with client_context(scheduler=args.scheduler, n_workers=args.workers) as client:
        print(f"Dask dashboard: {client.dashboard_link}")
        for src, dst in todo:
            if Path(src).resolve() != dst.resolve() and not (dst.exists() and is_complete(dst)):
                convert(src, dst, dataset=args.dataset, progress=True, force=args.force)
            vol = open_volume(dst)
            scores = segment(vol, model, patch_size=args.patch, crop=args.crop, batch_size=args.batch,
                             blend=args.blend, normalize=None if args.normalize == "none" else args.normalize,
                             tiling=args.tiling, block_shape=args.block, precision=args.precision, client=client,
                             force=args.force)
            print(f"{src}: segmenting {dict(zip(vol.dims, vol.shape))} into {dst / 'labels'}")
            write_segmentation(scores, dst, dtype=args.dtype, chunks=args.chunks, overwrite=args.overwrite,
                               client=client, progress=True)
            print(f"\n{src} -> {dst / 'labels'}")
    return 0


def _ints(text: str):
    vals = tuple(int(v) for v in text.split(","))
    return vals[0] if len(vals) == 1 else vals


# --- run ---------------------------------------------------------------------

_RUN_EXAMPLE = """
# pipeline.yaml
inputs: ["tomograms/*.mrc"]
outdir: out
workers: 2
segment: {model: phantom, patch_size: 48, crop: 8}
pick: {method: meanshift, radius: 5, min_size: 20, formats: [xml, star]}

tomochunk run pipeline.yaml      # rerun to resume: finished stages are skipped
"""


def _add_run(sub):
    p = _command(sub, "run", "run convert -> segment -> pick (-> evaluate) over many tomograms from a YAML config",
                 _RUN_EXAMPLE)
    p.add_argument("config", help="YAML config (see tomochunk.pipeline)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.add_argument("--workers", type=int, default=None, help="workers of the embedded LocalCluster")
    p.set_defaults(run=_run_run)


def _run_run(args):
    from .pipeline import load_config, run

    cfg = load_config(args.config)
    if args.scheduler:
        cfg["scheduler"] = args.scheduler
    if args.workers:
        cfg["workers"] = args.workers
    table = run(cfg, progress=True)
    print(table.to_string(index=False))


# --- tirf: the TIRF exocytosis workflow (ExoDeepFinder's steps) ---------------------------

def _add_tirf(sub):
    p = sub.add_parser("tirf", help="TIRF exocytosis workflow (ExoDeepFinder's steps) on OME-Zarr movies",
                       description="TIRF exocytosis workflow: convert -> detect -> annotate -> merge -> dataset "
                                   "-> train -> segment -> events. Movies are [t, y, x]; object lists hold "
                                   "x, y in pixels and z = frame.",
                       epilog="example:\n  tomochunk tirf convert experiment/ -o zarr/\n"
                              "  tomochunk tirf detect zarr/cell1.zarr -o spots/\n"
                              "  tomochunk tirf STEP --help   # each step's options and example",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = p.add_subparsers(dest="tirf_command", metavar="STEP")
    tsub.required = True

    c = _command(tsub, "convert", "convert every TIFF-frame folder under a parent folder to OME-Zarr movies",
                 "tomochunk tirf convert experiment/ -o zarr/")
    c.add_argument("parent")
    c.add_argument("-o", "--outdir", required=True)
    c.add_argument("--chunks", type=_ints, default=None, help="storage chunks, e.g. 64,512,512")
    c.add_argument("--levels", type=int, default=1)
    c.add_argument("--overwrite", action="store_true")
    c.add_argument("--skip-errors", action="store_true", help="report bad movies and go on")
    c.set_defaults(run=_run_tirf_convert)

    c = _command(tsub, "detect", "detect bright spots (LoG, no external binary) in movies",
                 "tomochunk tirf detect zarr/cell1.zarr zarr/cell2.zarr -o spots/ --sigma 1.5 --threshold 5")
    c.add_argument("movies", nargs="+", metavar="MOVIE")
    c.add_argument("-o", "--outdir", required=True, help="writes MOVIE_spots.csv (and MOVIE_spots.zarr)")
    c.add_argument("--method", choices=("log", "blob_log"), default="log")
    c.add_argument("--sigma", type=float, default=1.5)
    c.add_argument("--threshold", type=float, default=None)
    c.add_argument("--min-distance", type=int, default=3)
    c.add_argument("--labels", action="store_true", help="also write a detector label map")
    c.set_defaults(run=_run_tirf_detect)

    c = _command(tsub, "annotate", "expert event annotations (class 1) -> expert segmentation (a cone per event)",
                 "tomochunk tirf annotate zarr/cell1.zarr cell1/expert_annotation.xml -o cell1/expert_segmentation.zarr")
    c.add_argument("movie")
    c.add_argument("annotation")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--radii", type=_floats, default=None, help="disk radius per frame (default 4,2,0)")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(run=_run_tirf_annotate)

    c = _command(tsub, "merge", "merge detector spots (class 1) with expert events (class 2)",
                 "tomochunk tirf merge zarr/cell1.zarr --spots spots/cell1_spots.csv "
                 "--events cell1/expert_annotation.xml -o cell1/ --max-spots 9800")
    c.add_argument("movie")
    c.add_argument("--spots", required=True, help="object list or detector label map")
    c.add_argument("--events", required=True, help="expert annotation (class 1)")
    c.add_argument("-o", "--outdir", required=True,
                   help="writes merged_segmentation.zarr and merged_annotation.xml")
    c.add_argument("--match-radius", type=float, default=5.0)
    c.add_argument("--match-frames", type=int, default=None)
    c.add_argument("--max-spots", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(run=_run_tirf_merge)

    c = _command(tsub, "dataset", "train/valid split of movies as a JSON manifest",
                 "tomochunk tirf dataset --movies m1.zarr m2.zarr --targets t1.zarr t2.zarr "
                 "--objects o1.xml o2.xml -o dataset/ --valid-fraction 0.2")
    c.add_argument("--movies", nargs="+", required=True)
    c.add_argument("--targets", nargs="+", required=True)
    c.add_argument("--objects", nargs="+", required=True)
    c.add_argument("-o", "--outdir", required=True)
    c.add_argument("--valid-fraction", type=float, default=0.2)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(run=_run_tirf_dataset)

    c = _command(tsub, "train", "train the anisotropic network on a dataset manifest",
                 "tomochunk tirf train dataset/dataset.json -o model/ --epochs 50")
    c.add_argument("manifest")
    c.add_argument("-o", "--outdir", required=True)
    c.add_argument("--patch", type=_ints, default=None, help="patch size t,y,x")
    c.add_argument("--epochs", type=int, default=50)
    c.add_argument("--steps-per-epoch", type=int, default=100)
    c.add_argument("--batch-size", type=int, default=4)
    c.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    c.add_argument("--ce-weight", type=float, default=None,
                   help="weight of the cross-entropy term added to the Tversky loss (default 1)")
    c.add_argument("--class-weights", type=_floats, default=None,
                   help="cross-entropy weights of background,spot,exocytosis (default 1,10,50)")
    c.set_defaults(run=_run_tirf_train)

    c = _command(tsub, "segment", "segment movies with a trained model (label map: 1 spot, 2 exocytosis)",
                 "tomochunk tirf segment zarr/cell1.zarr -m model/model.keras -o seg/")
    c.add_argument("movies", nargs="+", metavar="MOVIE")
    c.add_argument("-m", "--model", required=True)
    c.add_argument("-o", "--outdir", required=True, help="writes MOVIE_segmentation.zarr")
    c.add_argument("--patch", type=_ints, default=None)
    c.add_argument("--tiling", choices=("patches", "blocks"), default="patches",
                   help="patches: ExoDeepFinder's patch tiling; blocks: one network call per block plus a halo")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(run=_run_tirf_segment)

    c = _command(tsub, "events", "segmentations -> exocytosis event lists (class 1, as expert annotations)",
                 "tomochunk tirf events seg/cell1_segmentation.zarr -o events/ --radius 5")
    c.add_argument("segmentations", nargs="+", metavar="SEG")
    c.add_argument("-o", "--outdir", required=True, help="writes SEG_events.xml")
    c.add_argument("--radius", type=float, default=5)
    c.add_argument("--method", choices=("meanshift", "cc"), default="meanshift")
    c.add_argument("--keep-labels-unchanged", action="store_true",
                   help="keep every class with its label (default: keep exocytosis, as class 1)")
    c.set_defaults(run=_run_tirf_events)


def _floats(text: str):
    return tuple(float(v) for v in text.split(","))


def _stem(path) -> str:
    from pathlib import Path

    p = Path(path)
    return p.name[:-5] if p.name.endswith(".zarr") else p.stem


def _run_tirf_convert(args):
    from .ops.tirf import convert_movies

    res = convert_movies(args.parent, args.outdir, chunks=args.chunks, levels=args.levels, overwrite=args.overwrite,
                         on_error="skip" if args.skip_errors else "raise", progress=True)
    bad = 0
    for folder, r in res.items():
        print(f"{folder} -> {r['output']}: {r['status']}" + (f" ({r['error']})" if "error" in r else ""))
        bad += r["status"] == "error"
    return 2 if bad else 0


def _run_tirf_detect(args):
    from pathlib import Path

    from .io.objects import write_objects
    from .io.volume import write_volume
    from .ops.tirf import detect_spots

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for m in args.movies:
        res = detect_spots(m, method=args.method, sigma=args.sigma, threshold=args.threshold,
                           min_distance=args.min_distance, labels=args.labels)
        spots = res[0] if args.labels else res
        write_objects(spots, out / f"{_stem(m)}_spots.csv")
        if args.labels:
            write_volume(res[1], out / f"{_stem(m)}_spots.zarr", levels=1, overwrite=True)
        print(f"{m}: {len(spots)} spots -> {out / (_stem(m) + '_spots.csv')}")


def _run_tirf_annotate(args):
    from .io.volume import write_volume
    from .ops.tirf import EVENT_RADII, event_targets

    with _progress():
        write_volume(event_targets(args.annotation, args.movie, radii=args.radii or EVENT_RADII), args.output,
                     levels=1, overwrite=args.overwrite)
    print(f"{args.annotation} -> {args.output}")


def _run_tirf_merge(args):
    from pathlib import Path

    from .ops.tirf import merge_annotations

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    with _progress():
        _, objs = merge_annotations(args.spots, args.events, args.movie, match_radius=args.match_radius,
                                    match_frames=args.match_frames, max_spots=args.max_spots, seed=args.seed,
                                    labels_path=out / "merged_segmentation.zarr",
                                    objects_path=out / "merged_annotation.xml", overwrite=args.overwrite)
    n_ev = int((objs["class_label"] == 2).sum())
    print(f"{n_ev} events, {len(objs) - n_ev} spots -> {out / 'merged_segmentation.zarr'}, "
          f"{out / 'merged_annotation.xml'}")


def _run_tirf_dataset(args):
    from .ops.tirf import make_dataset

    p = make_dataset(args.movies, args.targets, args.objects, args.outdir, valid_fraction=args.valid_fraction,
                     seed=args.seed)
    print(p)


def _run_tirf_train(args):
    from .ops.tirf import train_events

    kw = {} if args.patch is None else {"patch_size": args.patch}
    if args.ce_weight is not None:
        kw["ce_weight"] = args.ce_weight
    if args.class_weights is not None:
        kw["class_weights"] = args.class_weights
    _, history = train_events(args.manifest, args.outdir, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                              batch_size=args.batch_size, lr=args.lr, **kw)
    print(history.tail(1).to_string(index=False))
    print(f"model: {args.outdir}/model_final.keras")


def _run_tirf_segment(args):
    from .ops.tirf import segment_movies

    kw = {"tiling": args.tiling} if args.patch is None else {"patch_size": args.patch, "tiling": args.tiling}
    for m, out in segment_movies(args.movies, args.model, args.outdir, overwrite=args.overwrite, **kw).items():
        print(f"{m} -> {out}")


def _run_tirf_events(args):
    from pathlib import Path

    from .io.objects import write_objects
    from .ops.tirf import events_from_segmentation

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for s in args.segmentations:
        ev = events_from_segmentation(s, keep=None if args.keep_labels_unchanged else (2,), radius=args.radius,
                                      method=args.method)
        dst = out / f"{_stem(s)}_events.xml"
        write_objects(ev, dst)
        print(f"{s}: {len(ev)} events -> {dst}")


_COMMANDS = [
    _add_convert,
    _add_phantom,
    _add_target,
    _add_train,
    _add_pick,
    _add_segment,
    _add_run,
    _add_tirf,
]


# --- segment-features / export-meshes (model library) ---------------------------

def _add_segment_features(sub):
    p = _command(sub, "segment-features",
                 "apply N one-feature models (.tcm or Ais .scnm) to M tomograms; competition; one label map each",
                 "tomochunk segment-features tomo1.mrc tomo2.mrc -m membrane.tcm actin.scnm ribosome.tcm -o labels/")
    p.add_argument("tomograms", nargs="+", metavar="TOMO")
    p.add_argument("-m", "--models", nargs="+", required=True, metavar="MODEL",
                   help="model archives; label i is the i-th model")
    p.add_argument("-o", "--outdir", required=True, help="receives <tomogram>.zarr label stores")
    p.add_argument("--interaction", action="append", default=[], metavar="CHILD:MODE:PARENT:RADIUS",
                   help="keep a model's map near (colocalize) or away from (avoid) another's, radius in Å, "
                        "e.g. ribosome:colocalize:membrane:100 (repeatable)")
    p.add_argument("--object-weight", type=float, default=0.0, metavar="W",
                   help="0 (default): highest voxel score wins (EMAN2/Ais); W in (0, 1]: scores are mixed with "
                        "their object's mean, so confident objects beat another model's weak fragments")
    p.add_argument("--slab", type=int, default=None, help="slices per task (default: ~64 MB)")
    p.add_argument("--levels", type=int, default=2, help="multiscale levels of the label stores")
    p.add_argument("--overwrite", action="store_true", help="redo tomograms already done")
    p.add_argument("--allow-code", default=None, metavar="FILE",
                   help="a .py model file (registry template) that defines the archives' architecture: "
                        "archives are data and never name code that runs; only this file is trusted")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.add_argument("--workers", type=int, default=None, help="local worker processes")
    p.set_defaults(run=_run_segment_features)


def _run_segment_features(args):
    from .errors import ValueProblem
    from .nn.features import segment_features
    from .parallel import client_context

    inter = []
    for text in args.interaction:
        parts = text.split(":")
        if len(parts) != 4:
            raise ValueProblem(f"--interaction {text!r}: expected CHILD:MODE:PARENT:RADIUS")
        child, mode, parent, radius = parts
        inter.append({"child": child, "mode": mode, "parent": parent, "radius": float(radius)})
    with client_context(scheduler=args.scheduler, n_workers=args.workers) as client:
        models = [(m, args.allow_code) for m in args.models] if args.allow_code else args.models
        status = segment_features(args.tomograms, models, args.outdir, interactions=inter, client=client,
                                  slab=args.slab, levels=args.levels, overwrite=args.overwrite,
                                  object_weight=args.object_weight)
    for tomo, state in status.items():
        print(f"{tomo}: {state}")


def _add_export_meshes(sub):
    p = _command(sub, "export-meshes", "marching-cubes meshes (.obj, vertices in Å, x y z) of every object",
                 "tomochunk export-meshes labels/tomo1.zarr -o tomo1_meshes/ --min-volume 200")
    p.add_argument("map", metavar="MAP", help="label map [z,y,x] or score map [c,z,y,x]")
    p.add_argument("-o", "--out", required=True, help="a .obj file (all objects) or a folder (one .obj each)")
    p.add_argument("--level", type=float, default=0.5, help="iso-level for score maps")
    p.add_argument("--min-volume", type=int, default=27, help="dust size in voxels")
    p.add_argument("--classes", type=_ints, default=None, help="classes to mesh, e.g. 1,3")
    p.add_argument("--step", type=int, default=1, help="marching-cubes step size")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_run_export_meshes)


def _run_export_meshes(args):
    from .io.mesh import export_meshes

    classes = args.classes
    if isinstance(classes, int):
        classes = [classes]
    df = export_meshes(args.map, args.out, level=args.level, min_volume=args.min_volume,
                       classes=None if classes is None else list(classes),
                       step_size=args.step, overwrite=args.overwrite)
    print(f"{len(df)} meshes -> {args.out}")


_COMMANDS += [_add_segment_features, _add_export_meshes]


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args) or 0
    except TomochunkError as exc:
        if args.debug:
            raise
        print(f"tomochunk: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tomochunk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
