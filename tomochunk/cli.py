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


# --- tirf: the TIRF exocytosis workflow (ExoDeepFinder's steps) ---------------------------

def _add_tirf(sub):
    p = sub.add_parser("tirf", help="TIRF exocytosis workflow (ExoDeepFinder's steps) on OME-Zarr movies",
                       description="TIRF exocytosis workflow: convert -> detect -> annotate -> merge -> dataset "
                                   "-> train -> segment -> events. Movies are [t, y, x]; object lists hold "
                                   "x, y in pixels and z = frame.")
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
    c.set_defaults(run=_run_tirf_train)

    c = _command(tsub, "segment", "segment movies with a trained model (label map: 1 spot, 2 exocytosis)",
                 "tomochunk tirf segment zarr/cell1.zarr -m model/model.keras -o seg/")
    c.add_argument("movies", nargs="+", metavar="MOVIE")
    c.add_argument("-m", "--model", required=True)
    c.add_argument("-o", "--outdir", required=True, help="writes MOVIE_segmentation.zarr")
    c.add_argument("--patch", type=_ints, default=None)
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
    path = train_events(args.manifest, args.outdir, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                        batch_size=args.batch_size, **kw)
    print(path)


def _run_tirf_segment(args):
    from .ops.tirf import segment_movies

    kw = {} if args.patch is None else {"patch_size": args.patch}
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
    _add_tirf,
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
