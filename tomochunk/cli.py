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


# --- pick --------------------------------------------------------------------

_PICK_METHODS = {"cc": "cc", "meanshift": "meanshift", "peaks": "peaks", "centroid": "centroid",
                 "heatmap": "nms", "nms": "nms"}


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
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_run_pick)


def _run_pick(args):
    import pandas as pd

    from .io.objects import write_objects
    from .ops.pick import pick_inputs

    frames = []
    for src in args.inputs:
        df = pick_inputs(src, method=_PICK_METHODS[args.method], radius=args.radius, threshold=args.threshold,
                         min_size=args.min_size, min_spacing=args.min_spacing, margin=args.margin,
                         top_k=args.top_k, classes=args.classes, units=args.units,
                         voxel_size=args.voxel_size, level=args.level)
        print(f"{src}: {len(df)} objects")
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.attrs = dict(frames[0].attrs)
    out["obj_id"] = range(1, len(out) + 1)
    write_objects(out, args.output, overwrite=args.overwrite)
    print(f"{len(out)} objects -> {args.output}")


def _ints(text: str):
    vals = tuple(int(v) for v in text.split(","))
    return vals[0] if len(vals) == 1 else vals


_COMMANDS = [
    _add_convert,
    _add_pick,
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
