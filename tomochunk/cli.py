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
    p.add_argument("--normalize", choices=("meanstd", "percentile", "none"), default="meanstd",
                   help="intensity normalisation before segmenting (default: global mean/std)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="score storage dtype")
    p.add_argument("--chunks", type=int, default=256, help="storage chunk side of the outputs")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.add_argument("--workers", type=int, default=None, help="worker processes of the embedded cluster")
    p.add_argument("--dataset", default=None, help="HDF5 dataset name")
    p.add_argument("--overwrite", action="store_true", help="redo tomograms that are already segmented")
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
                convert(src, dst, dataset=args.dataset, progress=True)
            vol = open_volume(dst)
            scores = segment(vol, model, patch_size=args.patch, crop=args.crop, batch_size=args.batch,
                             blend=args.blend, normalize=None if args.normalize == "none" else args.normalize,
                             client=client)
            print(f"{src}: segmenting {dict(zip(vol.dims, vol.shape))} into {dst / 'labels'}")
            write_segmentation(scores, dst, dtype=args.dtype, chunks=args.chunks, overwrite=args.overwrite,
                               client=client, progress=True)
            print(f"\n{src} -> {dst / 'labels'}")
    return 0


def _ints(text: str):
    vals = tuple(int(v) for v in text.split(","))
    return vals[0] if len(vals) == 1 else vals


_COMMANDS = [
    _add_convert,
    _add_segment,
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
