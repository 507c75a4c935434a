"""The ``tomochunk`` command: a thin layer that parses arguments and calls the public API.

Errors from bad input are printed as one line and exit with status 2; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import textwrap

from ._quiet import NativeLogFilter, native_log_line, quiet_libraries
from .errors import TomochunkError, ValueProblem


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (and exit 2), like every other CLI failure."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' layout and shows each option's default, where it has a meaningful one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
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
                          formatter_class=_Formatter)


def _tty() -> bool:
    """Whether stdout is a terminal: progress bars only there (a log file gets one line per stage)."""
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


class _Summary:
    """Stands in for the progress bar when stdout is not a terminal: one line when the stage ends."""

    def __init__(self, stage):
        self.stage = stage

    def __enter__(self):
        import time

        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        import time

        if exc_type is None:
            print(f"{self.stage}: done in {time.perf_counter() - self.t0:.1f} s")
        return False


def _progress(stage: str = "computing"):
    """A Dask progress bar for computations run from the CLI; a one-line summary when not on a terminal."""
    if not _tty():
        return _Summary(stage)
    from dask.diagnostics import ProgressBar

    return ProgressBar()


# --- where to compute: one set of options and one client builder for every command ---------

def _add_cluster_options(p, embedded: bool = False):
    """Add ``--scheduler/--workers/--cluster/--jobs/...`` to a subcommand's parser.

    ``embedded=True``: the command builds its client with :func:`_cluster_client` and,
    without any of these options, gets an embedded LocalCluster. ``embedded=False``
    (call it after ``set_defaults(run=...)``): the command's ``run`` is wrapped to run
    inside :func:`_cluster_client`, whose client becomes the default one for its Dask
    computations; without any option it uses dask's local scheduler. Where the command
    already has ``--workers`` (``train``: its patch threads), the worker count is
    ``--dask-workers``."""
    g = p.add_argument_group("where to compute", "an embedded LocalCluster" + (" (default)" if embedded else "")
                             + ", a running scheduler, or batch jobs through dask-jobqueue; keys not given come "
                             "from dask's jobqueue.yaml")
    g.add_argument("--scheduler", metavar="ADDR", default=None, help="address of a running Dask scheduler")
    flag = "--dask-workers" if "--workers" in p._option_string_actions else "--workers"
    g.add_argument(flag, dest="cluster_workers", metavar="N", type=int, default=None,
                   help="worker processes of an embedded LocalCluster")
    g.add_argument("--cluster", choices=("local", "slurm", "pbs", "lsf", "sge"), default=None,
                   help="local: an embedded LocalCluster; slurm, pbs, lsf, sge: batch jobs (pip install "
                        "'tomochunk[slurm]'), kept at --jobs by adapt")
    g.add_argument("--jobs", type=int, default=None, help="batch jobs, one worker each by default (default 1)")
    g.add_argument("--cores", type=int, default=None, help="cores per job")
    g.add_argument("--memory", default=None, help="memory per job, e.g. 16GB")
    g.add_argument("--walltime", default=None, help="job time limit, e.g. 02:00:00")
    g.add_argument("--queue", default=None, help="partition / queue")
    g.add_argument("--gpus", type=int, default=None,
                   help="GPUs per job (--gres=gpu:G on SLURM; the workers advertise GPU=G)")
    g.add_argument("--gpu-jobs", type=int, default=None, help="how many of the jobs get --gpus (default: all)")
    g.add_argument("--job-extra", action="append", default=None, metavar="DIRECTIVE",
                   help="extra batch directive, e.g. --job-extra=--exclusive (repeatable)")
    p.set_defaults(cluster_embedded=embedded)
    if not embedded:
        run = p.get_default("run")

        def run_on_cluster(args):
            with _cluster_client(args):
                return run(args)

        p.set_defaults(run=run_on_cluster)


def _cluster_client(args, config=None):
    """The client for a command (a context manager; it closes what it started).

    ``config``: a ``run`` config whose ``scheduler``/``workers``/``cluster`` keys the
    command-line options override. Yields ``None`` (dask's local scheduler) when nothing
    asks for a cluster and the command does not embed one by default."""
    import contextlib

    from .parallel import client_from_config

    cfg = {k: v for k, v in (config or {}).items() if k in ("scheduler", "workers", "cluster")}
    spec = cfg.get("cluster") or {}
    spec = dict({"kind": spec} if isinstance(spec, str) else spec)
    given = {"kind": args.cluster, "jobs": args.jobs, "cores": args.cores, "memory": args.memory,
             "walltime": args.walltime, "queue": args.queue, "gpus": args.gpus, "gpu_jobs": args.gpu_jobs,
             "job_extra_directives": args.job_extra}
    spec.update({k: v for k, v in given.items() if v is not None})
    if args.scheduler:
        cfg["scheduler"] = args.scheduler
    if args.cluster_workers:
        cfg["workers"] = args.cluster_workers
    if spec:
        cfg["cluster"] = spec
    if cfg.get("scheduler") and spec.get("kind", "local") != "local":
        raise ValueProblem(f"--scheduler and --cluster {spec['kind']} exclude each other: pick one")
    if not cfg and not args.cluster_embedded:
        return contextlib.nullcontext(None)
    return client_from_config(cfg)


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
    p.add_argument("--ngff", choices=("0.4", "0.5"), default="0.4",
                   help="NGFF 0.4 on Zarr 2 (default, read by copick and the cryoET data portal) or 0.5 on Zarr 3")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="convert inputs whose metadata marks them as label maps (with a warning)")
    p.set_defaults(run=_run_convert)


def _run_convert(args):
    from pathlib import Path

    from .io.convert import convert
    from .workflows.batch import output_paths

    out = Path(args.outdir)
    outputs = output_paths(args.inputs, out)  # TS_01/tomo.mrc, TS_02/tomo.mrc: two stores, not one
    out.mkdir(parents=True, exist_ok=True)
    for src, dst in outputs.items():
        convert(src, dst, chunks=args.chunks, levels=args.levels, overwrite=args.overwrite,
                dataset=args.dataset, progress=_tty(), ngff=args.ngff, force=args.force,
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
    g2.add_argument("--heatmap", type=float, metavar="SIGMA",
                    help="sparse labels (cet_pick style): a Gaussian of this sigma (voxels) per object; "
                         "writes 1 (hard positive), 2 (soft, ignored) and 0 (unlabeled), for train --loss pu")
    p.add_argument("--soft", type=float, default=0.1, help="--heatmap: soft-positive threshold")
    p.add_argument("--hard", type=float, default=0.5, help="--heatmap: hard-positive threshold")
    p.add_argument("--heat-out", default=None, help="--heatmap: also write the float heatmap here")
    p.add_argument("--initial", help="volume to start from (e.g. membrane labels); objects overwrite it")
    p.add_argument("--tomo", help="use only the objects of this tomogram")
    p.add_argument("--chunks", type=_ints, default=None, help="block size, e.g. 256 or 64,256,256")
    p.add_argument("--no-rotate", action="store_true", help="ignore the objects' Euler angles")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_run_target)
    _add_cluster_options(p)


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
    if args.heatmap is not None:
        lab = _heatmap_target(args, objs, shape, voxel_size)
    elif args.radii:
        lab = spheres(objs, shape, _per_class_arg(args.radii, float), **common)
    else:
        masks = _per_class_arg(args.masks, lambda f: np.asarray(open_volume(f).data))
        lab = shapes(objs, shape, masks, **common)
    with _progress("writing the target"):
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
    p.add_argument("--patch", type=_ints, default=None,
                   help="patch size, multiple of 4 (default: the recipe's, 24 for czii; 48 otherwise)")
    p.add_argument("--batch", type=int, default=None,
                   help="patches per optimiser step (default: the recipe's, 4 for czii; 8 otherwise)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=50, help="steps per epoch")
    p.add_argument("--valid-steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default: the recipe's, 1e-3 for czii, 1e-4 for deepfinder)")
    p.add_argument("--model", help="start from this model (.keras or DeepFinder .h5)")
    p.add_argument("--filters", default=None,
                   help="'default' (32,48,64), 'small' (8,12,16) or a,b,c (default: the recipe's, 16,24,32 for czii)")
    p.add_argument("--anisotropic", action="store_true", help="movie variant, pooling (1,2,2)")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTDIR")
    p.add_argument("--workers", type=int, default=2, help="threads preparing patches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ce-weight", type=float, default=0.0,
                   help="add cross-entropy with this weight to the Tversky loss (default 0)")
    p.add_argument("--precision", choices=("float32", "bfloat16", "auto"), default="auto",
                   help="network arithmetic (default auto: mixed bfloat16 on a GPU or a CPU with AMX/AVX512-BF16, "
                        "where it is 3-4x faster, float32 where the CPU would emulate it, 10x slower)")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bfloat16",
                   help="alias of --precision bfloat16")
    p.add_argument("--backend", choices=_backend_choices(), default="auto",
                   help="Keras backend of the training (default auto: KERAS_BACKEND if set, else torch where "
                        "it is installed and the training runs float32 on a CPU, 4x faster steps than "
                        "TensorFlow on Zen 3; tensorflow otherwise). The model segments on any backend")
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
    g = p.add_argument_group("accuracy options (issue 23; --recipe czii, the default, sets them all)")
    g.add_argument("--recipe", choices=("deepfinder", "czii"), default="czii",
                   help="czii (default; measured by benchmarks/bench_accuracy.py): Tversky + cross-entropy, "
                        "wedge-safe flips/rot90/intensity, EMA 0.999, warm-up + cosine; the options below "
                        "override its parts. deepfinder: DeepFinder's exact recipe (Tversky, 180-degree "
                        "flips, constant lr, no EMA)")
    g.add_argument("--class-weights", type=lambda t: [float(v) for v in t.split(",")], default=None,
                   help="per-class cross-entropy weights w0,w1,... (needs --ce-weight > 0)")
    g.add_argument("--pos-weight", type=float, default=None,
                   help="cross-entropy weight of every particle class against background 1 (the CZII "
                        "winner's 256 suits rare particles; on crowded volumes it labels everything)")
    g.add_argument("--loss-alpha", type=float, default=0.5, help="Tversky weight of false positives")
    g.add_argument("--loss-beta", type=float, default=0.5, help="Tversky weight of false negatives")
    g.add_argument("--augment", choices=("tomo", "movie", "wedge", "none"), default=None,
                   help="tomo: 180-degree rotation about y (default); wedge: flips of z,y,x, 90-degree "
                        "rotations about z, intensity jitter")
    g.add_argument("--ema", type=float, default=None,
                   help="average the weights with this decay (e.g. 0.999; 0: no averaging)")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None,
                   help="cosine: linear warm-up then cosine decay (default: the recipe's)")
    g.add_argument("--minutes", type=float, default=None, help="wall-clock budget of the training, minutes")
    g.add_argument("--bootstrap", action=argparse.BooleanOptionalAction, default=True,
                   help="class-balanced sampling of patch centres (default on)")
    g.add_argument("--shift", type=int, default=13, help="random shift of patch centres, voxels (default 13)")
    p.set_defaults(run=_run_train)
    _add_cluster_options(p)


def _accuracy_options(args) -> dict:
    """``train`` keywords of the accuracy flags; ``--recipe czii`` fills those left at their defaults."""
    from .nn.train import RECIPES

    kw = {"class_weights": args.class_weights, "pos_weight": args.pos_weight, "loss_alpha": args.loss_alpha,
          "loss_beta": args.loss_beta, "augment": None if args.augment is None else args.augment,
          "ema": args.ema, "lr_schedule": args.lr_schedule, "minutes": args.minutes,
          "bootstrap": args.bootstrap, "shift": args.shift, "lr": args.lr, "patch_size": args.patch,
          "batch_size": args.batch,
          "filters": None if args.filters is None else
          args.filters if args.filters in ("default", "small") else _ints(args.filters)}
    recipe = dict(RECIPES[args.recipe]) if args.recipe else {}
    if args.recipe == "czii":
        if args.loss not in ("tversky", "dice_ce") or args.class_weights is not None:
            recipe.pop("pos_weight", None)   # PU losses take no class weights; explicit weights win
            if args.loss not in ("tversky", "dice_ce"):
                recipe.pop("ce_weight", None)
        if args.anisotropic:
            recipe.pop("augment", None)      # movies: flips of y, x only (train's default for them)
            recipe.pop("patch_size", None)   # the cube and the width were measured on tomograms only
            recipe.pop("filters", None)
            recipe.pop("batch_size", None)
    if recipe:
        for k, v in recipe.items():
            if k == "ce_weight":
                args.ce_weight = args.ce_weight or v
            elif k in kw and kw[k] is None:
                kw[k] = v
    kw["lr_schedule"] = kw["lr_schedule"] or "constant"
    for k in ("lr", "patch_size", "filters", "batch_size"):
        if kw[k] is None:
            del kw[k]   # no recipe, no flag: train()'s own default
    if kw["ema"] == 0:
        kw["ema"] = None   # --ema 0: no averaging, whatever the recipe
    return kw


def _box(text: str):
    from .errors import ValueProblem

    try:
        box = tuple(tuple(int(v) for v in part.split(":")) for part in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 3 or any(len(b) != 2 or b[0] >= b[1] for b in box):
        raise ValueProblem(f"region must be z0:z1,y0:y1,x0:x1 with each start < end, not {text!r}")
    return box


def _backend_choices():
    from .nn._backend import CHOICES   # light: no Keras

    return CHOICES


def _run_train(args):
    from .nn._backend import choose_backend, use_backend

    use_backend(choose_backend(args.backend, args.precision))   # before anything imports Keras
    from . import read_objects, train
    from ._names import tomo_name
    from .errors import ValueProblem

    if len(args.volumes) != len(args.targets):
        raise ValueProblem(f"{len(args.volumes)} volumes but {len(args.targets)} targets")
    otrain, ovalid = read_objects(args.train), read_objects(args.valid)
    # Key volumes by file stem when the object lists name tomograms that way, else by index.
    stems = [tomo_name(v) for v in args.volumes]
    names = set()
    for o in (otrain, ovalid):
        if "tomo" in o.columns:
            names |= set(o["tomo"].astype(str))
    keys = stems if names and names <= set(stems) else [str(i) for i in range(len(args.volumes))]
    _, hist = train(dict(zip(keys, args.volumes)), dict(zip(keys, args.targets)), otrain, ovalid,
                    n_classes=args.n_classes,
                    epochs=args.epochs, steps_per_epoch=args.steps, valid_steps=args.valid_steps,
                    out_dir=args.outdir, model=args.model,
                    anisotropic=args.anisotropic, checkpoint_every=args.checkpoint_every,
                    resume=args.resume, workers=args.workers, seed=args.seed,
                    precision=args.precision, ce_weight=args.ce_weight,
                    micro_batch=args.micro_batch or None, **_accuracy_options(args),
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
    with _progress("writing the phantom"):
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
                 "--units angstrom -o picks.star --tilt-series-pixel-size 2.5\n"
                 "tomochunk pick seg/TS_01.zarr seg/TS_02.zarr --copick project/ --user me --session 1")
    p.add_argument("inputs", nargs="+", metavar="LABELS_OR_SCORES",
                   help="segmentation stores (labels/classes, labels/scores inside), zarr arrays or MRC files; or "
                        "one copick project config (.json): its runs' multilabel segmentations, picks written "
                        "into the project unless -o or --copick is given")
    p.add_argument("-o", "--output", default=None, help="objects.{xml,star,csv,json,...} (needed without --copick)")
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
    _add_star_options(p)
    _add_copick_output(p)
    _add_copick_input(p, picking=True)
    p.add_argument("--sizes", default="auto", metavar="auto|none|SIZES_JSON",
                   help="cc/meanshift/centroid: drop objects smaller than --size-factor x the 5th percentile of their "
                        "class's training objects; auto (default): the sizes.json of the model that segmented "
                        "the input, when known; none: keep every size")
    p.add_argument("--size-factor", type=float, default=None,
                   help="fraction of the class's 5th-percentile size for --sizes (default 0.25)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_run_pick)
    _add_cluster_options(p)


def _z_range(text: str):
    lo, _, hi = text.partition(",")
    return (float(lo) if lo.strip() else None, float(hi) if hi.strip() else None)


def _size_options(args) -> dict:
    """``pick_inputs`` keywords of ``--sizes`` / ``--size-factor``."""
    sizes = None if str(args.sizes).lower() == "none" else args.sizes
    return {"sizes": sizes, **({} if args.size_factor is None else {"size_factor": args.size_factor})}


def _run_pick(args):
    from .io.objects import write_objects
    from .workflows.batch import output_names, pick_many

    names, project = _pick_copick_inputs(args)
    if args.output is None and args.copick is None:
        raise ValueProblem("give -o OUTPUT (an object list) or --copick ROOT (a copick project's overlay root)")
    out = pick_many(list(names or args.inputs), names=names, method=_PICK_METHODS[args.method],
                    radius=args.radius, threshold=args.threshold, min_size=args.min_size, min_spacing=args.min_spacing, margin=args.margin,
                    top_k=args.top_k, classes=args.classes, units=args.units,
                    voxel_size=args.voxel_size, level=args.level, **_size_options(args),
                    **({"z_range": args.z_range, "border": args.border, "smooth": args.smooth}
                       if args.method == "heatmap" else {}))
    if project is not None:
        # multilabel: voxels hold the objects' labels; a store's own class names (ours) come first
        out.attrs["classes"] = {**project.objects, **(out.attrs.get("classes") or {})}
    counts = out["tomo"].value_counts() if len(out) else {}
    for src, name in (names or output_names(args.inputs)).items():
        print(f"{src}: {int(counts.get(name, 0))} objects" + (f" (tomo {name})" if len(names or args.inputs) > 1
                                                             else ""))
    if args.output is not None:
        write_objects(out, args.output, overwrite=args.overwrite, **_star_kw(args.output, args))
        print(f"{len(out)} objects -> {args.output}")
    _write_copick_picks(out, args)


# --- segment -----------------------------------------------------------------

def _add_segment(sub):
    p = _command(sub, "segment", "segment tomograms with a 3D U-Net on a Dask cluster; write score and "
                 "label maps into each tomogram's OME-Zarr store (labels/scores, labels/classes)",
                 "tomochunk segment tomo1.mrc tomo2.zarr -m net_weights_FINAL.h5 -o zarr/ --patch 160 --workers 2\n"
                 "tomochunk segment zarr/*.zarr -m unet.keras -o zarr/ --scheduler tcp://head:8786\n"
                 "tomochunk segment copick.json --voxel-spacing 10 --tomo-type wbp -m unet.keras -o scores/")
    p.add_argument("inputs", nargs="+", metavar="TOMO",
                   help="tomograms (MRC, HDF5, TIFF, Zarr), or one copick project config (.json): its runs' "
                        "tomograms, each label map also written where copick lists segmentations")
    p.add_argument("-m", "--model", required=True, nargs="+",
                   help="network: .keras, DeepFinder .h5 weights, or 'phantom' (the model shipped in the "
                        "package, trained on tomochunk phantoms at 10 A: for phantoms only); several: an "
                        "ensemble, averaged in one pass")
    p.add_argument("-o", "--outdir", required=True, help="folder of OME-Zarr stores (<name>.zarr)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the 8 flips of z, y, x in each block (8x network time)")
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
    p.add_argument("--precision", choices=("float32", "bfloat16", "auto"), default="float32",
                   help="network arithmetic; bfloat16 is ~4.5x faster on CPUs with AMX/AVX512-BF16 and GPUs")
    p.add_argument("--chunks", type=int, default=256, help="storage chunk side of the outputs")
    p.add_argument("--dataset", default=None, help="HDF5 dataset name")
    p.add_argument("--level", type=_level, default=0, metavar="N",
                   help="segment pyramid level N of the OME-Zarr image (bin 2**N): the maps are written at "
                        "that level's scale (NGFF coordinateTransformations) in labels/scores and "
                        "labels/classes, and `pick` gives level-0 voxels")
    p.add_argument("--overwrite", action="store_true", help="redo tomograms that are already segmented")
    p.add_argument("--force", action="store_true",
                   help="segment inputs whose metadata marks them as label maps (with a warning)")
    _add_copick_input(p, segmentation=True)
    _add_cluster_options(p, embedded=True)
    p.set_defaults(run=_run_segment)


def _level(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"a pyramid level is an integer >= 0, not {text!r}")
    return n


def _segmented_level(labels):
    """The image level a complete segmentation in ``labels`` was computed on (None: none there)."""
    from .io.omezarr import is_complete, read_multiscale

    if not all((labels / n).exists() and is_complete(labels / n) for n in ("scores", "classes")):
        return None
    return int(read_multiscale(labels / "classes", check=False)[1]["attrs"].get("image_level", 0))


def _run_segment(args):
    from pathlib import Path

    from .errors import ExistsError
    from .io.convert import convert
    from .io.omezarr import is_complete
    from .io.volume import open_volume
    from .nn.segment import segment
    from .workflows.batch import output_paths
    from .workflows.segment import write_segmentation

    out = Path(args.outdir)
    project, tomos = _copick_inputs(args)
    if project is not None and args.level:
        # copick keeps each binning as its own voxel spacing: choose it there
        raise ValueProblem("--level: a copick project's binnings are its voxel spacings; pass --voxel-spacing")
    # a copick project: each run's tomogram is read in place; the scores go to OUTDIR/<run>.zarr
    pairs = output_paths(args.inputs, out) if project is None else {t.path: out / f"{t.run}.zarr" for t in tomos}
    copick_seg = {} if project is None else {t.path: (t, project.segmentation_path(
        t.run, t.voxel_spacing, args.user, args.session, args.seg_name)) for t in tomos}
    out.mkdir(parents=True, exist_ok=True)
    models = [_model_file(m) for m in args.model]
    model = models[0] if len(models) == 1 else models
    todo = []
    for src, dst in pairs.items():
        labels = dst / "labels"
        done = None if args.overwrite else _segmented_level(labels)
        if done == args.level and (src not in copick_seg or (copick_seg[src][1].exists()
                                                             and is_complete(copick_seg[src][1]))):
            print(f"{src}: already segmented in {labels}" + (f" at level {done}" if done else "") + ", skipped")
            continue
        if done is not None and done != args.level:
            raise ExistsError(f"segmented at level {done}, not {args.level}; pass --overwrite to replace it",
                              labels)
        todo.append((src, dst, done))
    if not todo:
        return 0
    with _cluster_client(args) as client:
        print(f"Dask dashboard: {client.dashboard_link}")
        for src, dst, done in todo:
            if src in copick_seg and done == args.level:
                _export_copick(project, copick_seg[src], dst, args)  # only the copick copy was missing
                continue
            if src in copick_seg:
                vol = open_volume(src)  # a copick tomogram is an OME-Zarr store already: read in place
            else:
                if Path(src).resolve() != dst.resolve() and not (dst.exists() and is_complete(dst)):
                    convert(src, dst, dataset=args.dataset, progress=_tty(), force=args.force)
                vol = open_volume(dst, level=args.level)
            scores = segment(vol, model, patch_size=args.patch, crop=args.crop, batch_size=args.batch,
                             blend=args.blend, normalize=None if args.normalize == "none" else args.normalize,
                             tiling=args.tiling, block_shape=args.block, precision=args.precision, client=client,
                             tta=args.tta, force=args.force)
            at = f" (level {args.level}, {vol.attrs['voxel_size']:g} A voxels)" if args.level else ""
            print(f"{src}: segmenting {dict(zip(vol.dims, vol.shape))}{at} into {dst / 'labels'}")
            write_segmentation(scores, dst, dtype=args.dtype, chunks=args.chunks, overwrite=args.overwrite,
                               client=client, progress=_tty(), level=args.level)
            print(("\n" if _tty() else "") + f"{src} -> {dst / 'labels'}")
            if src in copick_seg:
                _export_copick(project, copick_seg[src], dst, args)
    return 0


def _export_copick(project, item, dst, args):
    from .io.copick_project import export_segmentation

    seg = export_segmentation(project, item[0], dst, user=args.user, session=args.session, name=args.seg_name,
                              overwrite=True)
    print(f"{item[0].run}: copick segmentation -> {seg}")


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
    p.add_argument("config", help="YAML config (see tomochunk.workflows.pipeline)")
    _add_cluster_options(p, embedded=True)
    p.set_defaults(run=_run_run)


def _run_run(args):
    from .workflows.pipeline import load_config, run

    cfg = load_config(args.config)
    with _cluster_client(args, config=cfg) as client:
        table = run(cfg, client=client, progress=_tty())
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
    _add_cluster_options(c)

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
    _add_cluster_options(c)

    c = _command(tsub, "annotate", "expert event annotations (class 1) -> expert segmentation (a cone per event)",
                 "tomochunk tirf annotate zarr/cell1.zarr cell1/expert_annotation.xml "
                 "-o cell1/expert_segmentation.zarr\n"
                 "tomochunk tirf annotate --batch experiment/   # every folder: movie.zarr + expert_annotation.xml "
                 "-> expert_segmentation.zarr")
    c.add_argument("movie", nargs="?", default=None, help="the movie (with --batch: its name in each folder)")
    c.add_argument("annotation", nargs="?", default=None,
                   help="its expert annotation, .xml or .csv (with --batch: the name in each folder)")
    c.add_argument("-o", "--output", default=None,
                   help="the expert segmentation (with --batch: its name in each folder, default "
                        "expert_segmentation.zarr)")
    c.add_argument("--radii", type=_floats, default=None, help="disk radius per frame (default 4,2,0)")
    _add_tirf_batch(c)
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(run=_run_tirf_annotate)
    _add_cluster_options(c)

    c = _command(tsub, "merge", "merge detector spots (class 1) with expert events (class 2)",
                 "tomochunk tirf merge zarr/cell1.zarr --spots spots/cell1_spots.csv "
                 "--events cell1/expert_annotation.xml -o cell1/\n"
                 "tomochunk tirf merge --batch experiment/   # every folder: movie.zarr, detector_segmentation.zarr, "
                 "expert_annotation.xml -> merged_segmentation.zarr, merged_annotation.xml")
    c.add_argument("movie", nargs="?", default=None, help="the movie (with --batch: its name in each folder)")
    c.add_argument("--spots", default=None,
                   help="object list or detector label map (with --batch: its name in each folder, default "
                        "detector_segmentation.zarr)")
    c.add_argument("--events", default=None,
                   help="expert annotation, class 1 (with --batch: default expert_annotation.xml)")
    c.add_argument("-o", "--outdir", default=None,
                   help="writes merged_segmentation.zarr and merged_annotation.xml (with --batch: default each "
                        "folder itself)")
    c.add_argument("--match-radius", type=float, default=5.0)
    c.add_argument("--match-frames", type=int, default=None)
    c.add_argument("--max-spots", type=_max_spots, default=9800,
                   help="detector spots kept in the object list, sampled (ExoDeepFinder's 9800); 'all' keeps every one")
    c.add_argument("--seed", type=int, default=0)
    _add_tirf_batch(c)
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(run=_run_tirf_merge)
    _add_cluster_options(c)

    c = _command(tsub, "dataset", "train/valid split of movies as a JSON manifest",
                 "tomochunk tirf dataset --movies m1.zarr m2.zarr --targets t1.zarr t2.zarr "
                 "--objects o1.xml o2.xml -o dataset/ --valid-fraction 0.2")
    c.add_argument("--movies", nargs="+", required=True)
    c.add_argument("--targets", nargs="+", required=True)
    c.add_argument("--objects", nargs="+", required=True)
    c.add_argument("-o", "--outdir", required=True)
    c.add_argument("--valid-fraction", type=float, default=0.3,
                   help="share of movies for validation (ExoDeepFinder's 30%%, its --split 70)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(run=_run_tirf_dataset)
    _add_cluster_options(c)

    c = _command(tsub, "train", "train the anisotropic network on a dataset manifest. Differs from ExoDeepFinder "
                 "on purpose: it trains one network on (16, 48, 48) patches with Tversky + weighted cross-entropy "
                 "(50 epochs x 100 steps, batch 4), where ExoDeepFinder chains four trainings (patches 8, 16, 32, "
                 "48; batches 256, 128, 32, 10; 100 epochs x 100 steps each) on the Tversky loss alone, which needs "
                 "long runs on the rare exocytosis class; --ce-weight 0 and --epochs 100 come closer to it",
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
    _add_cluster_options(c)

    c = _command(tsub, "segment", "segment movies with a trained model (label map: 1 spot, 2 exocytosis)",
                 "tomochunk tirf segment zarr/cell1.zarr -m model/model.keras -o seg/")
    c.add_argument("movies", nargs="+", metavar="MOVIE")
    c.add_argument("-m", "--model", required=True)
    c.add_argument("-o", "--outdir", required=True, help="writes MOVIE_segmentation.zarr")
    c.add_argument("--patch", type=_ints, default=None)
    c.add_argument("--tiling", choices=("patches", "blocks"), default="patches",
                   help="patches: ExoDeepFinder's patch tiling; blocks: one network call per block plus a halo")
    c.add_argument("--crop", type=int, default=None, help="voxels discarded per patch side (default 25)")
    c.add_argument("-v", "--visualization", action="store_true",
                   help="also write MOVIE_data.png and MOVIE_prediction.png (orthoslices of the movie, and with "
                        "the label map over it), as ExoDeepFinder's --visualization")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(run=_run_tirf_segment)
    _add_cluster_options(c)

    c = _command(tsub, "events", "segmentations -> exocytosis event lists (class 1, as expert annotations)",
                 "tomochunk tirf events seg/cell1_segmentation.zarr -o events/ --radius 5")
    c.add_argument("segmentations", nargs="+", metavar="SEG")
    c.add_argument("-o", "--outdir", required=True, help="writes SEG_events.xml")
    c.add_argument("--radius", type=float, default=5)
    c.add_argument("--method", choices=("meanshift", "cc"), default="meanshift")
    c.add_argument("--keep-labels-unchanged", action="store_true",
                   help="keep every class with its label (default: keep exocytosis, as class 1)")
    c.set_defaults(run=_run_tirf_events)
    _add_cluster_options(c)


def _floats(text: str):
    return tuple(float(v) for v in text.split(","))


def _run_tirf_convert(args):
    from .workflows.tirf import convert_movies

    res = convert_movies(args.parent, args.outdir, chunks=args.chunks, levels=args.levels, overwrite=args.overwrite,
                         on_error="skip" if args.skip_errors else "raise", progress=_tty())
    bad = 0
    for folder, r in res.items():
        print(f"{folder} -> {r['output']}: {r['status']}" + (f" ({r['error']})" if "error" in r else ""))
        bad += r["status"] == "error"
    return 2 if bad else 0


def _run_tirf_detect(args):
    from pathlib import Path

    from .io.objects import write_objects
    from .io.volume import write_volume
    from .workflows.batch import output_names
    from .workflows.tirf import detect_spots

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for m, stem in output_names(args.movies).items():
        res = detect_spots(m, method=args.method, sigma=args.sigma, threshold=args.threshold,
                           min_distance=args.min_distance, labels=args.labels)
        spots = res[0] if args.labels else res
        write_objects(spots, out / f"{stem}_spots.csv")
        if args.labels:
            write_volume(res[1], out / f"{stem}_spots.zarr", levels=1, overwrite=True)
        print(f"{m}: {len(spots)} spots -> {out / (stem + '_spots.csv')}")


def _add_tirf_batch(c):
    c.add_argument("-b", "--batch", default=None, metavar="ROOT",
                   help="process every folder of ROOT (ExoDeepFinder's --batch): file names are taken in each "
                        "folder; '{name}' in one is the folder's name, an absolute path is used as is")


def _max_spots(text: str):
    if text.lower() in ("all", "none"):
        return None
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"--max-spots must be >= 1 or 'all', not {text}")
    return n


def _tirf_batch(args, names: dict) -> list:
    """``[{key: path}]`` per movie: one entry from the arguments, or one per folder of ``--batch``.

    ``names``: ``{key: (argument value, default name in a folder)}``."""
    from pathlib import Path

    from .errors import MissingError

    if args.batch is None:
        missing = [k for k, (v, _) in names.items() if v is None]
        if missing:
            raise ValueProblem(f"give {', '.join(missing)} (or --batch ROOT to process every folder of ROOT)")
        return [{k: Path(v) for k, (v, _) in names.items()}]
    root = Path(args.batch)
    if not root.is_dir():
        raise MissingError("--batch needs a folder of movie folders", root)
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and d.suffix.lower() != ".zarr")
    if not folders:
        raise MissingError("--batch: no movie folder in it", root)
    out = []
    for d in folders:
        entry = {}
        for k, (v, default) in names.items():
            p = Path(str(v if v is not None else default).replace("{name}", d.name))
            entry[k] = p if p.is_absolute() else d / p
        out.append(entry)
    return out


def _run_tirf_annotate(args):
    from .io.volume import write_volume
    from .workflows.tirf import EVENT_RADII, event_targets

    jobs = _tirf_batch(args, {"MOVIE": (args.movie, "movie.zarr"),
                              "ANNOTATION": (args.annotation, "expert_annotation.xml"),
                              "-o": (args.output, "expert_segmentation.zarr")})
    for j in jobs:
        with _progress():
            write_volume(event_targets(j["ANNOTATION"], j["MOVIE"], radii=args.radii or EVENT_RADII), j["-o"],
                         levels=1, overwrite=args.overwrite)
        print(f"{j['ANNOTATION']} -> {j['-o']}")


def _run_tirf_merge(args):
    from .workflows.tirf import merge_annotations

    jobs = _tirf_batch(args, {"MOVIE": (args.movie, "movie.zarr"),
                              "--spots": (args.spots, "detector_segmentation.zarr"),
                              "--events": (args.events, "expert_annotation.xml"),
                              "-o": (args.outdir, ".")})
    for j in jobs:
        out = j["-o"]
        out.mkdir(parents=True, exist_ok=True)
        with _progress():
            _, objs = merge_annotations(j["--spots"], j["--events"], j["MOVIE"], match_radius=args.match_radius,
                                        match_frames=args.match_frames, max_spots=args.max_spots, seed=args.seed,
                                        labels_path=out / "merged_segmentation.zarr",
                                        objects_path=out / "merged_annotation.xml", overwrite=args.overwrite)
        n_ev = int((objs["class_label"] == 2).sum())
        print(f"{j['MOVIE']}: {n_ev} events, {len(objs) - n_ev} spots -> {out / 'merged_segmentation.zarr'}, "
              f"{out / 'merged_annotation.xml'}")


def _run_tirf_dataset(args):
    from .workflows.tirf import make_dataset

    p = make_dataset(args.movies, args.targets, args.objects, args.outdir, valid_fraction=args.valid_fraction,
                     seed=args.seed)
    print(p)


def _run_tirf_train(args):
    from .workflows.tirf import train_events

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
    from .workflows.tirf import segment_movies

    kw = {"tiling": args.tiling} if args.patch is None else {"patch_size": args.patch, "tiling": args.tiling}
    if args.crop is not None:
        kw["crop"] = args.crop
    for m, out in segment_movies(args.movies, args.model, args.outdir, overwrite=args.overwrite, **kw).items():
        print(f"{m} -> {out}")
        if args.visualization:
            from .io.volume import open_volume
            from .viz import orthoslices

            stem = out.name[:-len("_segmentation.zarr")]
            movie, lab = open_volume(m), open_volume(out)
            pngs = [orthoslices(movie, out.parent / f"{stem}_data.png", title=f"{stem}: movie"),
                    orthoslices(movie, out.parent / f"{stem}_prediction.png", labels=lab,
                                classes={1: "spot", 2: "exocytosis"}, title=f"{stem}: segmentation")]
            print(f"{m}: pictures -> {', '.join(map(str, pngs))}")


def _run_tirf_events(args):
    from pathlib import Path

    from .io.objects import write_objects
    from .workflows.batch import output_names
    from .workflows.tirf import events_from_segmentation

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for s, stem in output_names(args.segmentations).items():
        ev = events_from_segmentation(s, keep=None if args.keep_labels_unchanged else (2,), radius=args.radius,
                                      method=args.method)
        dst = out / f"{stem}_events.xml"
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
    p.add_argument("--save-scores", action="store_true",
                   help="also keep each feature's score map in <tomogram>.zarr/labels/scores ([c, z, y, x], "
                        "channel i = label i, 0 = background), so `pick --method peaks|heatmap` picks features")
    p.add_argument("--threshold", action="append", default=None, metavar="[MODEL:]T",
                   help="score threshold overriding the archives': T for every model, or MODEL:T for one "
                        "(MODEL: title or label 1..N; repeatable)")
    p.add_argument("--emit", default=None, metavar="MODEL,...",
                   help="Ais competition: the models (titles or labels) that emit, overriding the archives' "
                        "flags; 'none' for no emitter")
    p.add_argument("--absorb", default=None, metavar="MODEL,...",
                   help="the models that absorb (their voxels lose to emitters'), overriding the archives'; "
                        "'none' for no absorber")
    p.add_argument("--slab", type=int, default=None, help="slices per task (default: ~64 MB)")
    p.add_argument("--levels", type=int, default=2, help="multiscale levels of the label stores")
    p.add_argument("--overwrite", action="store_true", help="redo tomograms already done")
    p.add_argument("--allow-code", default=None, metavar="FILE",
                   help="a .py model file (registry template) that defines the archives' architecture: "
                        "archives are data and never name code that runs; only this file is trusted")
    _add_cluster_options(p, embedded=True)
    p.set_defaults(run=_run_segment_features)


def _run_segment_features(args):
    from .errors import ValueProblem
    from .workflows.features import segment_features

    inter = []
    for text in args.interaction:
        parts = text.split(":")
        if len(parts) != 4:
            raise ValueProblem(f"--interaction {text!r}: expected CHILD:MODE:PARENT:RADIUS")
        child, mode, parent, radius = parts
        inter.append({"child": child, "mode": mode, "parent": parent, "radius": float(radius)})
    over = _feature_overrides(args)
    with _cluster_client(args) as client:
        models = [(m, args.allow_code) for m in args.models] if args.allow_code else args.models
        status = segment_features(args.tomograms, models, args.outdir, interactions=inter, client=client,
                                  slab=args.slab, levels=args.levels, overwrite=args.overwrite,
                                  object_weight=args.object_weight, save_scores=args.save_scores, **over)
    for tomo, state in status.items():
        print(f"{tomo}: {state}")


def _feature_model(text, n):
    """A model named on the command line: its title, or its label 1..n (-> index 0..n-1)."""
    text = text.strip()
    if text.isdigit():
        if not 1 <= int(text) <= n:
            raise ValueProblem(f"model label {text} is not among 1..{n} (label i is the i-th -m model)")
        return int(text) - 1
    return text


def _feature_overrides(args):
    """--threshold/--emit/--absorb as segment_features keywords (titles stay names; labels become indices)."""
    n = len(args.models)
    over = {}
    if args.threshold:
        th = {}
        for text in args.threshold:
            key, _, val = text.rpartition(":")
            try:
                t = float(val)
            except ValueError:
                raise ValueProblem(f"--threshold {text!r}: expected T or MODEL:T with T a number") from None
            for k in ([_feature_model(key, n)] if key else range(n)):
                th[k] = t
        over["thresholds"] = th
    for flag in ("emit", "absorb"):
        text = getattr(args, flag)
        if text is not None:
            over[flag] = [] if text.strip().lower() == "none" else \
                [_feature_model(v, n) for v in text.split(",") if v.strip()]
    return over


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
    _add_cluster_options(p)


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


# --- evaluate / objects / view / train-slices (issue 22): whole workflows from the shell ---------

def _model_file(name) -> str:
    """A model path, or the name of a model shipped in the package (``phantom``), as a pipeline YAML takes."""
    from pathlib import Path

    from .errors import MissingError
    from .workflows.pipeline import shipped_model

    p = Path(name)
    if p.exists():
        return str(p.resolve())
    if not p.suffix and p.name == str(name):
        try:
            return str(shipped_model(str(name)))
        except MissingError:
            raise MissingError("no such model file, nor a shipped model of that name (shipped: phantom)",
                               name) from None
    raise MissingError("no such model file", name)


def _heatmap_target(args, objs, shape, voxel_size):
    """``target --heatmap SIGMA``: the 0/1/2 label map of ``heatmap_targets`` (and its float heatmap)."""
    from . import heatmap_targets, write_volume

    if args.initial:
        raise ValueProblem("--initial cannot be combined with --heatmap")
    if args.tomo is not None and "tomo" in objs.columns:
        objs = objs[objs["tomo"].astype(str) == str(args.tomo)]
    heat, lab = heatmap_targets(objs, shape, sigma=args.heatmap, soft=args.soft, hard=args.hard,
                                chunks=args.chunks)
    if args.heat_out:
        with _progress("writing the heatmap"):
            write_volume(heat, args.heat_out, voxel_size=voxel_size, overwrite=args.overwrite)
        print(f"heatmap -> {args.heat_out}")
    return lab


def _names_or_ints(text: str):
    """``1,3`` or ``ribosome,membrane`` (class names) as a list of ints and strings."""
    return [int(t) if t.strip().lstrip("-").isdigit() else t.strip() for t in text.split(",") if t.strip()]


def _radii_arg(text: str):
    """``1:5,2:8`` or ``ribosome:150`` -> ``{label or name: radius}``."""
    out = {}
    for item in text.split(","):
        key, sep, val = item.partition(":")
        try:
            out[int(key) if key.strip().isdigit() else key.strip()] = float(val)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected CLASS:RADIUS,..., e.g. 1:5,2:8, not {text!r}")
    return out


def _shape_arg(text: str):
    vals = _ints(text)
    if isinstance(vals, int) or len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected three sizes z,y,x, not {text!r}")
    return vals


def _read_list(path, args):
    from . import read_objects

    kw = {"shape": args.shape} if getattr(args, "shape", None) and str(path).lower().endswith(".star") else {}
    return read_objects(path, voxel_size=getattr(args, "voxel_size", None), **kw)


def _write_list(df, path, args):
    from . import write_objects

    kw = {"shape": args.shape} if getattr(args, "shape", None) and str(path).lower().endswith(".star") else {}
    write_objects(df, path, overwrite=args.overwrite, **kw, **_star_kw(path, args))
    vs = df.attrs.get("voxel_size")
    print(f"{len(df)} objects -> {path}" + (f" (voxel size {vs:g} A)" if vs else ""))


def _add_star_options(p):
    """The options of every command that may write a RELION STAR file."""
    g = p.add_argument_group("RELION STAR output")
    g.add_argument("--tilt-series-pixel-size", type=float, default=None, metavar="A",
                   help="pixel size (A) of the tilt series the tomograms were reconstructed from, written as "
                        "rlnTomoTiltSeriesPixelSize (RELION 4 pixel coordinates are in these pixels)")
    g.add_argument("--star-coordinates", choices=("centered", "pixel"), default=None,
                   help="centered: RELION 5 rlnCenteredCoordinate*Angst (default where the tomogram shape is "
                        "known); pixel: RELION 4 rlnCoordinate* in tilt-series pixels")


def _star_kw(path, args) -> dict:
    """``write_objects`` keywords of the STAR options, for a ``.star`` output only."""
    if not str(path).lower().endswith(".star"):
        return {}
    kw = {"tilt_series_pixel_size": getattr(args, "tilt_series_pixel_size", None),
          "coordinates": getattr(args, "star_coordinates", None)}
    return {k: v for k, v in kw.items() if v is not None}


def _add_copick_output(p):
    """``--copick ROOT --user U --session S``: picks written into a copick project, one file per object and run."""
    g = p.add_argument_group("copick output")
    g.add_argument("--copick", default=None, metavar="ROOT",
                   help="also write the picks into this copick project folder (its overlay root): "
                        "ExperimentRuns/<run>/Picks/<user>_<session>_<object>.json, one file per object and run")
    g.add_argument("--user", default="tomochunk", help="copick user_id of the picks")
    g.add_argument("--session", default="0", help="copick session_id of the picks; '0' marks a tool's")


def _pick_copick_inputs(args):
    """``({segmentation store: run}, project)`` for a copick project input set, else ``(None, None)``."""
    from .io.copick_project import is_copick_config, open_project

    if not any(is_copick_config(i) for i in args.inputs):
        if args.voxel_spacing is not None or any((args.seg_user, args.seg_session, args.seg_name)):
            raise ValueProblem("--voxel-spacing and --seg-* choose the segmentations of a copick project; "
                               "the inputs are not one")
        return None, None
    if len(args.inputs) > 1:
        raise ValueProblem(f"{args.inputs[0]}: a copick project is the whole input set; give it alone")
    if args.method not in ("cc", "meanshift"):
        raise ValueProblem(f"{args.inputs[0]}: copick projects hold label maps; pick them with --method cc or "
                           "meanshift (or pick the score stores that segment wrote in its -o folder)")
    project = open_project(args.inputs[0])
    names = project.segmentation_inputs(args.voxel_spacing, user=args.seg_user, session=args.seg_session,
                                        name=args.seg_name)
    if args.output is None and args.copick is None:
        args.copick = str(project.overlay)  # a project's picks go back into it
    return names, project


def _write_copick_picks(df, args):
    if getattr(args, "copick", None) is None:
        return
    from .io.objects import write_copick

    paths = write_copick(df, args.copick, args.user, args.session, overwrite=args.overwrite)
    print(f"{len(df)} objects -> {len(paths)} copick picks files under {args.copick}")


def _add_copick_input(p, segmentation=False, picking=False):
    """Options of a command whose input set may be a copick project config."""
    g = p.add_argument_group("copick project input (a copick config .json as the input set)")
    g.add_argument("--voxel-spacing", type=float, default=None, metavar="A",
                   help=f"voxel spacing of the runs' {'segmentations' if picking else 'tomograms'} "
                        "(default: the project's only one)")
    if picking:
        g.add_argument("--seg-user", default=None, help="pick the runs' segmentations of this copick user")
        g.add_argument("--seg-session", default=None, help="... of this session")
        g.add_argument("--seg-name", default=None, help="... of this name (each run must have one match)")
        return
    g.add_argument("--tomo-type", default=None, help="tomogram type, e.g. wbp, denoised (default: the only one)")
    if segmentation:
        g.add_argument("--user", default="tomochunk", help="copick user_id of the segmentations")
        g.add_argument("--session", default="0", help="copick session_id of the segmentations; '0' marks a tool's")
        g.add_argument("--seg-name", default="segmentation",
                       help="copick name of the multilabel segmentation: ExperimentRuns/<run>/Segmentations/"
                            "<vs>_<user>_<session>_<name>-multilabel.zarr")


def _copick_inputs(args):
    """``(project, tomograms)`` when the input set is a copick config, else ``(None, None)``."""
    from .io.copick_project import project_inputs

    return project_inputs(args.inputs, voxel_spacing=args.voxel_spacing, tomo_type=args.tomo_type)


def _add_evaluate(sub):
    p = _command(sub, "evaluate", "score picks against ground truth, per class (precision, recall, F1)",
                 "tomochunk evaluate picks.xml truth.xml --max-dist 5 -o scores.csv --plot curve.png\n"
                 "tomochunk evaluate picks.star truth.star --method czii --radii ribosome:150,apo-ferritin:60 "
                 "--unit angstrom")
    p.add_argument("pred", metavar="PRED", help="predicted object list (xml, csv, star, json, ...)")
    p.add_argument("truth", metavar="TRUTH", help="ground-truth object list")
    p.add_argument("--method", choices=("hungarian", "deepfinder", "czii"), default="hungarian",
                   help="hungarian: optimal one-to-one matching; deepfinder: DeepFinder's Evaluator; "
                        "czii: the CZII challenge's F-beta")
    p.add_argument("--max-dist", type=float, default=None,
                   help="largest match distance (in --unit), needed by hungarian and deepfinder")
    p.add_argument("--radii", type=_radii_arg, default=None, metavar="CLASS:R,...",
                   help="czii: particle radius per class label or name, e.g. 1:5,2:8")
    p.add_argument("--beta", type=float, default=4.0, help="czii: F-beta parameter")
    p.add_argument("--unit", choices=("voxel", "angstrom"), default="voxel",
                   help="distances in voxels, or in A (lists of different binnings then compare)")
    p.add_argument("--voxel-size", type=float, default=None, help="A per voxel of both lists, if they lack it")
    p.add_argument("-o", "--output", default=None, help="write the table as CSV")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also plot precision, recall and F1 against the picks' score threshold")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args):
    from . import evaluate, plot_threshold_curve

    pred, truth = _read_list(args.pred, args), _read_list(args.truth, args)
    kw = dict(max_dist=args.max_dist, method=args.method, unit=args.unit)
    if args.method == "czii":
        kw.update(radii=args.radii, beta=args.beta)
    elif args.radii is not None:
        raise ValueProblem("--radii is for --method czii; hungarian and deepfinder take --max-dist")
    table = evaluate(pred, truth, **kw)
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    if args.output:
        table.to_csv(args.output)
        print(f"table -> {args.output}")
    if args.plot:
        curve = plot_threshold_curve(pred, truth, path=args.plot, **kw)
        best = curve.loc[curve["f1"].idxmax()] if curve["f1"].notna().any() else None
        col = "score" if "score" in pred.columns else "size"
        print(f"threshold curve -> {args.plot}" +
              ("" if best is None else f" (max F1 {best['f1']:.3f} at {col} >= {best['threshold']:.3g})"))


def _add_objects(sub):
    p = sub.add_parser("objects", help="convert, filter, merge, split or rescale object lists",
                       description="Object-list operations. The format of every file follows its extension "
                                   "(.xml DeepFinder, .csv ExoDeepFinder, .star RELION, .json copick, .tsv Ais, "
                                   ".txt cet_pick, .xlsx).",
                       epilog="example:\n  tomochunk objects convert picks.xml -o picks.star\n"
                              "  tomochunk objects ACTION --help   # each action's options and example",
                       formatter_class=_Formatter)
    osub = p.add_subparsers(dest="objects_command", metavar="ACTION")
    osub.required = True

    def common(c, many=False):
        c.add_argument("inputs" if many else "input", nargs="+" if many else None, metavar="IN",
                       help="object list(s)")
        c.add_argument("-o", "--output", required=True, help="output object list")
        c.add_argument("--voxel-size", type=float, default=None, help="A per voxel (overrides the file's)")
        c.add_argument("--shape", type=_shape_arg, default=None,
                       help="z,y,x of the tomogram, for STAR files in centred A")
        _add_star_options(c)
        c.add_argument("--overwrite", action="store_true", help="replace an existing output")

    c = _command(osub, "convert", "convert an object list to the format of the output's extension",
                 "tomochunk objects convert picks.xml -o picks.star --voxel-size 10")
    common(c)
    c.set_defaults(run=_run_objects_convert)

    c = _command(osub, "filter", "keep some classes, scores or sizes; non-maximum suppression",
                 "tomochunk objects filter picks.xml -o best.xml --classes 1,3 --min-score 0.5 --nms 8")
    common(c)
    c.add_argument("--classes", type=_names_or_ints, default=None, help="labels or names to keep, e.g. 1,3")
    c.add_argument("--tomo", default=None, help="keep only this tomogram's objects")
    c.add_argument("--min-score", type=float, default=None)
    c.add_argument("--max-score", type=float, default=None)
    c.add_argument("--min-size", type=float, default=None, help="voxels")
    c.add_argument("--max-size", type=float, default=None, help="voxels")
    c.add_argument("--nms", type=float, default=None, metavar="DIST",
                   help="drop objects closer than DIST voxels to a better one (same class and tomogram)")
    c.set_defaults(run=_run_objects_filter)

    c = _command(osub, "merge", "concatenate object lists (same voxel size)",
                 "tomochunk objects merge t1.xml t2.xml t3.xml -o all.xml")
    common(c, many=True)
    c.set_defaults(run=_run_objects_merge)

    c = _command(osub, "split", "write one object list per tomogram into a folder",
                 "tomochunk objects split all.star -o per_tomo/ --format txt")
    common(c)
    c.add_argument("--format", default=None, help="output extension (default: the input's), e.g. txt, xml")
    c.set_defaults(run=_run_objects_split)

    c = _command(osub, "scale", "move coordinates between binnings (the voxel size follows)",
                 "tomochunk objects scale bin2_picks.xml -o bin1_picks.xml --factor 2")
    common(c)
    c.add_argument("--factor", type=float, required=True,
                   help="coordinate factor: 2 from bin 2 to bin 1, 0.5 from bin 1 to bin 2")
    c.set_defaults(run=_run_objects_scale)


def _run_objects_convert(args):
    _write_list(_read_list(args.input, args), args.output, args)


def _run_objects_filter(args):
    from . import filter_objects, nms_objects, select_classes

    df = _read_list(args.input, args)
    n0 = len(df)
    if args.tomo is not None:
        if "tomo" not in df.columns:
            raise ValueProblem(f"{args.input}: --tomo given but the list names no tomograms")
        attrs = dict(df.attrs)
        df = df[df["tomo"].astype(str) == str(args.tomo)]
        df.attrs = attrs
    if args.classes is not None:
        df = select_classes(df, args.classes)
    if any(v is not None for v in (args.min_score, args.max_score, args.min_size, args.max_size)):
        df = filter_objects(df, min_score=args.min_score, max_score=args.max_score, min_size=args.min_size,
                            max_size=args.max_size)
    if args.nms is not None:
        df = nms_objects(df, args.nms)
    print(f"{args.input}: kept {len(df)} of {n0} objects")
    _write_list(df, args.output, args)


def _run_objects_merge(args):
    from . import merge_objects

    _write_list(merge_objects([_read_list(f, args) for f in args.inputs]), args.output, args)


def _run_objects_split(args):
    from pathlib import Path

    from . import split_by_tomogram
    from ._names import inside, safe_name, tomo_name

    df = _read_list(args.input, args)
    if Path(args.output).suffix:
        raise ValueProblem(f"split writes a folder of files; -o {args.output} looks like a file")
    ext = "." + args.format.lstrip(".") if args.format else Path(args.input).suffix
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for tomo, part in split_by_tomogram(df).items():
        name = safe_name(tomo_name(args.input) if tomo is None else tomo, "tomogram name")
        _write_list(part, inside(name + ext, out), args)


def _run_objects_scale(args):
    from . import scale_coordinates

    _write_list(scale_coordinates(_read_list(args.input, args), args.factor), args.output, args)


def _add_view(sub):
    p = _command(sub, "view", "orthoslice picture (xy, xz, yz) of a tomogram with its labels, picks and truth",
                 "tomochunk view tomo.zarr --labels seg/tomo.zarr --objects picks.xml --truth truth.xml -o view.png")
    p.add_argument("tomo", metavar="TOMO", help="tomogram (any format)")
    p.add_argument("-o", "--output", required=True, help="PNG")
    p.add_argument("--labels", default=None, help="label map drawn translucent (a segmentation store works)")
    p.add_argument("--objects", default=None, help="picks, drawn as yellow circles")
    p.add_argument("--truth", default=None, help="ground truth, drawn as white crosses")
    p.add_argument("--slices", type=_shape_arg, default=None, metavar="Z,Y,X",
                   help="voxel positions of the three slices (default: the centre)")
    p.add_argument("--slab", type=int, default=3, help="draw objects within this many slices of each slice")
    p.add_argument("--level", type=int, default=0, help="multiscale level of OME-Zarr inputs")
    p.add_argument("--title", default=None)
    p.set_defaults(run=_run_view)


def _run_view(args):
    from pathlib import Path

    from . import open_volume, orthoslices

    vol = open_volume(args.tomo, level=args.level)
    if vol.ndim != 3:
        raise ValueProblem(f"{args.tomo}: view draws a 3D volume, got {vol.ndim} dimensions")
    labels = None
    if args.labels:
        src = Path(args.labels)
        labels = open_volume(src / "labels" / "classes" if (src / "labels" / "classes").exists() else src,
                             level=args.level)
        if tuple(labels.shape) != tuple(vol.shape):
            raise ValueProblem(f"{args.labels}: labels {tuple(labels.shape)} and tomogram {tuple(vol.shape)} "
                               "differ in shape")
    objs = _read_list(args.objects, args) if args.objects else None
    truth = _read_list(args.truth, args) if args.truth else None
    classes = {}
    for src in (truth, objs, labels):
        if src is not None:
            classes.update({int(k): str(v) for k, v in (src.attrs.get("classes") or {}).items()})
    pos = args.slices
    if pos is not None and any(not 0 <= p < s for p, s in zip(pos, vol.shape)):
        raise ValueProblem(f"--slices {','.join(map(str, pos))} lies outside the volume {tuple(vol.shape)}")
    orthoslices(vol, args.output, labels=labels, objects=objs, position=pos, title=args.title or args.tomo,
                slab=args.slab, truth=truth, classes=classes or None, voxel_size=vol.attrs.get("voxel_size"))
    print(f"{args.tomo} -> {args.output}")


def _add_train_slices(sub):
    p = _command(sub, "train-slices",
                 "train a 2D/2.5D one-feature model (EMAN2/Ais) from annotated slices or tiles; write a .tcm",
                 "tomochunk train-slices tomo.mrc --mask membrane_mask.mrc --slices 40:60 --arch unet2d "
                 "--box 64 \\\n    --copies 4 --negative-ratio 0.3 --valid 0.1 --epochs 20 --title membrane "
                 "-o membrane.tcm\n"
                 "tomochunk segment-features tomo.mrc -m membrane.tcm -o labels/")
    p.add_argument("tomo", nargs="?", metavar="TOMO", help="annotated tomogram (with --mask)")
    p.add_argument("-o", "--output", required=True, help="model archive (.tcm)")
    p.add_argument("--mask", default=None, help="annotation of TOMO: 0/1 mask or label map (see --label)")
    p.add_argument("--label", type=int, default=None, help="the feature's label in --mask (default: any > 0)")
    p.add_argument("--slices", default=None, metavar="Z0:Z1|Z,Z,...",
                   help="annotated slices to draw tiles from (default: every slice with an annotation)")
    p.add_argument("--tiles", default=None, help="instead of TOMO: a stack [n, box, box] of annotated tiles")
    p.add_argument("--tile-masks", default=None, help="with --tiles: their masks [n, box, box]")
    p.add_argument("--arch", default="unet2d", help="registered architecture (unet2d, unet25d, eman2, ...)")
    p.add_argument("--box", type=int, default=64, help="tile side in pixels")
    p.add_argument("--context", type=int, default=0, help="neighbouring slices each side as channels (2.5D)")
    p.add_argument("--n-tiles", type=int, default=200, help="tiles cut from TOMO")
    p.add_argument("--positive-fraction", type=float, default=0.5, help="share of tiles centred on the feature")
    p.add_argument("--copies", type=int, default=4, help="rotated/flipped copies of each positive tile (Ais)")
    p.add_argument("--negative-ratio", type=float, default=0.3,
                   help="extra negatives per positive copy (0.3: 30%% more negatives than positives)")
    p.add_argument("--valid", type=float, default=0.1, help="validation split (fraction of the tiles)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", choices=("dice_bce", "bce"), default="dice_bce")
    p.add_argument("--title", default=None, help="feature name (label name in segment-features)")
    p.add_argument("--threshold", type=float, default=0.5, help="score threshold stored in the archive")
    p.add_argument("--pixel-size", type=float, default=None, help="A per pixel (default: TOMO's voxel size)")
    p.add_argument("--emit", action="store_true", help="Ais competition: this model's voxels beat absorbers")
    p.add_argument("--absorb", action="store_true", help="Ais competition: emitters' voxels beat this model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_run_train_slices)


def _slice_list(text, nz):
    try:
        if ":" in text:
            lo, hi = (int(v) for v in text.split(":"))
            out = list(range(lo, hi))
        else:
            out = [int(v) for v in text.split(",")]
    except ValueError:
        out = []
    if not out or any(not 0 <= z < nz for z in out):
        raise ValueProblem(f"--slices {text!r}: expected Z0:Z1 or Z,Z,... within 0..{nz - 1}")
    return out


def _run_train_slices(args):
    from pathlib import Path

    import numpy as np

    from . import new_model, open_volume, save_archive, train_slices
    from .errors import ExistsError
    from .nn.slices import sample_tiles

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise ExistsError("output exists; pass --overwrite to replace it", out)
    if not out.parent.exists():
        raise ValueProblem(f"{out}: the output folder {out.parent} does not exist")
    for name, v in (("--box", args.box), ("--copies", args.copies), ("--epochs", args.epochs),
                    ("--n-tiles", args.n_tiles), ("--batch", args.batch)):
        if v < 1:
            raise ValueProblem(f"{name} must be >= 1, not {v}")
    if not 0 <= args.valid < 1 or args.negative_ratio < 0 or args.context < 0:
        raise ValueProblem("--valid must be in [0, 1), --negative-ratio and --context >= 0")
    pixel = args.pixel_size
    if args.tiles:
        if args.tomo or args.mask or not args.tile_masks:
            raise ValueProblem("give either TOMO with --mask, or --tiles with --tile-masks")
        if args.context:
            raise ValueProblem("--context needs TOMO and --mask (tiles are single slices)")
        tv = open_volume(args.tiles)
        tiles, masks = np.asarray(tv.data), np.asarray(open_volume(args.tile_masks).data)
        masks = masks == args.label if args.label is not None else masks > 0
        pixel = pixel or tv.attrs.get("voxel_size")
    else:
        if not args.tomo or not args.mask:
            raise ValueProblem("give TOMO with --mask (or --tiles with --tile-masks)")
        vol, lab = open_volume(args.tomo), open_volume(args.mask)
        if vol.ndim != 3 or tuple(lab.shape) != tuple(vol.shape):
            raise ValueProblem(f"{args.mask}: mask {tuple(lab.shape)} does not match tomogram {tuple(vol.shape)}")
        mask = np.asarray(lab.data)
        mask = mask == args.label if args.label is not None else mask > 0
        slices = _slice_list(args.slices, vol.shape[0]) if args.slices else np.flatnonzero(mask.any((1, 2)))
        if not len(slices):
            raise ValueProblem(f"{args.mask}: no annotated voxel" + ("" if args.label is None else
                                                                     f" of label {args.label}"))
        tiles, masks = sample_tiles(np.asarray(vol.data), mask, box=args.box, n=args.n_tiles, slices=slices,
                                    context=args.context, positive_fraction=args.positive_fraction,
                                    rng=args.seed)
        pixel = pixel or vol.attrs.get("voxel_size")
    box = int(tiles.shape[1])
    fm = new_model(args.arch, box_size=box, channels=2 * args.context + 1, title=args.title, pixel_size=pixel,
                   threshold=args.threshold, emit=args.emit, absorb=args.absorb, seed=args.seed)
    hist = train_slices(fm, tiles, masks, n_copies=args.copies, excess_negative=args.negative_ratio,
                        epochs=args.epochs, batch_size=args.batch, learning_rate=args.lr, loss=args.loss,
                        pixel_size=pixel, validation_split=args.valid, seed=args.seed)
    save_archive(fm, out, overwrite=args.overwrite)
    h = hist.history
    val = f", validation loss {h['val_loss'][-1]:.4f}" if h.get("val_loss") else ""
    print(f"trained {fm.info.title} ({args.arch}, box {box}, {len(tiles)} tiles) for {len(h['loss'])} epochs: "
          f"loss {h['loss'][-1]:.4f}{val}")
    print(f"model -> {out} (pixel size {fm.info.pixel_size} A, threshold {fm.info.threshold})")


_COMMANDS += [_add_evaluate]
_COMMANDS += [_add_objects]
_COMMANDS += [_add_view]
_COMMANDS += [_add_train_slices]


def _os_error(exc: OSError) -> str:
    """One line naming the path (and the other path of a rename/link) of a failed file operation."""
    from pathlib import Path

    if isinstance(exc, FileNotFoundError) and exc.filename and exc.filename2 is None:
        parent = Path(str(exc.filename)).parent
        if str(parent) not in ("", ".") and not parent.exists():
            return f"{parent}: the folder does not exist (create it first)"
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {what}" if where else what


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    quiet_libraries(args.verbose)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet = NativeLogFilter() if not args.verbose else contextlib.nullcontext()
    with quiet:
        return _main(args)


def _main(args) -> int:
    try:
        return args.run(args) or 0
    except TomochunkError as exc:
        if args.debug:
            raise
        print(f"tomochunk: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a missing or unwritable output folder, a full disk, an unreachable scheduler
        if args.debug:
            raise
        print(f"tomochunk: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tomochunk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
