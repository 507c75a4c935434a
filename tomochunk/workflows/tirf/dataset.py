"""A seeded train/valid split of movies, written as a JSON manifest (no symlinks, no copies)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..._log import get_logger
from ...errors import FormatError, MissingError, ValueProblem

log = get_logger(__name__)


def make_dataset(movies, targets, objects, outdir, *, valid_fraction=0.3, seed=0, name="dataset.json"):
    """Write a train/valid split of movies as a manifest (JSON), no symlinks or copies.

    Parameters
    ----------
    movies, targets, objects : sequence of paths
        Per movie: the movie, its label map (target) and its object list, in the same order.
    valid_fraction : float
        Share of movies held out for validation (at least one of each when there are two
        or more movies). Default 0.3, ExoDeepFinder's (its ``--split 70``: 70% of the
        movies train).
    seed : int
        Seed of the shuffle.

    Returns
    -------
    Path
        The manifest: ``{"train": [{"movie", "target", "objects"}...], "valid": [...],
        "seed", "valid_fraction"}``, paths absolute.

    Examples
    --------
    >>> make_dataset(["m1.zarr", "m2.zarr"], ["t1.zarr", "t2.zarr"], ["o1.xml", "o2.xml"], "ds/")  # doctest: +SKIP
    """
    movies, targets, objects = list(movies), list(targets), list(objects)
    if not (len(movies) == len(targets) == len(objects)):
        raise ValueProblem(f"need as many targets and object lists as movies: {len(movies)} movies, "
                           f"{len(targets)} targets, {len(objects)} object lists")
    if not movies:
        raise ValueProblem("no movies given")
    if not 0 <= valid_fraction < 1:
        raise ValueProblem(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    for p in movies + targets + objects:
        if not Path(p).exists():
            raise MissingError("dataset file does not exist", p)
    n = len(movies)
    n_valid = int(round(n * valid_fraction))
    if valid_fraction > 0 and n >= 2:
        n_valid = min(max(n_valid, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    entries = [{"movie": str(Path(m).resolve()), "target": str(Path(t).resolve()),
                "objects": str(Path(o).resolve())} for m, t, o in zip(movies, targets, objects)]
    manifest = {"seed": int(seed), "valid_fraction": float(valid_fraction),
                "train": [entries[i] for i in sorted(order[n_valid:])],
                "valid": [entries[i] for i in sorted(order[:n_valid])]}
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / name
    out.write_text(json.dumps(manifest, indent=2))
    log.info("dataset %s: %d train, %d valid movies", out, len(manifest["train"]), n_valid)
    return out


def read_dataset(manifest):
    """Read a manifest written by :func:`make_dataset`: ``{"train": [...], "valid": [...]}``."""
    p = Path(manifest)
    if not p.exists():
        raise MissingError("no such dataset manifest", p)
    try:
        data = json.loads(p.read_text())
    except ValueError as exc:
        raise FormatError(f"not a JSON manifest ({exc})", p) from None
    for split in ("train", "valid"):
        if split not in data:
            raise FormatError(f"manifest has no {split!r} list", p)
        for i, e in enumerate(data[split]):
            for k in ("movie", "target", "objects"):
                if k not in e:
                    raise FormatError(f"{split} entry {i} has no {k!r}", p)
    return data
