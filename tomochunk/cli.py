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


def _ints(text: str):
    vals = tuple(int(v) for v in text.split(","))
    return vals[0] if len(vals) == 1 else vals


_COMMANDS = [
    _add_convert,
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
    p.add_argument("--slab", type=int, default=None, help="slices per task (default: ~64 MB)")
    p.add_argument("--levels", type=int, default=2, help="multiscale levels of the label stores")
    p.add_argument("--overwrite", action="store_true", help="redo tomograms already done")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.add_argument("--workers", type=int, default=None, help="local worker processes")
    p.set_defaults(run=_run_segment_features)


def _run_segment_features(args):
    from .nn.features import segment_features
    from .parallel import client_context

    with client_context(scheduler=args.scheduler, n_workers=args.workers) as client:
        status = segment_features(args.tomograms, args.models, args.outdir, client=client, slab=args.slab,
                                  levels=args.levels, overwrite=args.overwrite)
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
