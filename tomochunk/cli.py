"""The ``tomochunk`` command: a thin layer that parses arguments and calls the public API.

Errors from bad input are printed as one line and exit with status 2; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap

from .errors import TomochunkError


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
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_run_convert)


def _run_convert(args):
    from pathlib import Path

    from .io.convert import convert, output_name

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for src in args.inputs:
        dst = out / output_name(src)
        convert(src, dst, chunks=args.chunks, levels=args.levels, overwrite=args.overwrite,
                dataset=args.dataset, progress=True)
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
                 "    --epochs 50 --steps 100 -o run1/")
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
    p.set_defaults(run=_run_train)


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
                    precision="bfloat16" if args.bf16 else "float32", ce_weight=args.ce_weight)
    last = hist.iloc[-1]
    f1 = ", ".join(f"{c}: {last[f'val_f1_{c}']:.3f}" for c in range(1, args.n_classes))
    print(f"trained {int(last['epoch'])} epochs -> {args.outdir}/model_final.keras; validation F1 {f1}")


def _ints(text: str):
    vals = tuple(int(v) for v in text.split(","))
    return vals[0] if len(vals) == 1 else vals


_COMMANDS = [
    _add_convert,
    _add_target,
    _add_train,
]


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
