#!/usr/bin/env python3
"""Does DeepFinder's own reader take the object lists that tomochunk writes?

DeepFinder 0.2.1 (PyPI ``cryoet-deepfinder``) runs in its own virtual environment
(default ``/work/venvs/df``; ``--df-python`` or ``TOMOCHUNK_DEEPFINDER_PYTHON``); this
script calls its ``deepfinder.utils.objl.read`` (``.xml`` through ``read_xml``, ``.xlsx``
through ``read_excel``) in a subprocess on:

- the picks of ``tomochunk pick`` (two phantom label maps, so ``tomo_idx`` is 0 and 1) as
  ``.xml`` and ``.xlsx``;
- a list with angles, scores and sizes written by :func:`tomochunk.write_objects` as ``.xml``,
  ``.xlsx`` and ``.csv`` (DeepFinder 0.2.1 has no CSV reader: ExoDeepFinder's format; reported).

For each file it prints whether DeepFinder read it, and whether DeepFinder's objects agree with
the list itself (the in-memory list for ``write_objects``; for the CLI's picks, the CSV copy of
the same picks read with pandas): ``tomo_idx`` through the ``<list>.tomos.json`` name map,
class labels, coordinates, angles, cluster sizes. Exit status 1 if any readable format disagrees.

Run::

    PYTHONPATH=. .venv/bin/python benchmarks/check_deepfinder_reader.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

DF_SIDE = textwrap.dedent(r'''
    import json, sys
    import deepfinder.utils.objl as ol
    out = {}
    for path in sys.argv[2:]:
        try:
            objl = ol.read(path) if not path.endswith(".csv") else None
            if objl is None:
                out[path] = {"ok": False, "error": "DeepFinder 0.2.1 reads only .xml and .xlsx (objl.read)"}
            else:
                out[path] = {"ok": True, "objects": objl}
        except Exception as e:  # what a user of DeepFinder would see
            out[path] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    json.dump(out, open(sys.argv[1], "w"))
''')


def _tomochunk(*argv):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-m", "tomochunk.cli", *map(str, argv)], env=env, capture_output=True,
                       text=True, timeout=600)
    if r.returncode:
        raise SystemExit(f"tomochunk {' '.join(map(str, argv))} failed:\n{r.stderr}")


def _inputs(d: Path):
    """Two phantom label maps picked by the CLI; a list with every column written by write_objects."""
    from tomochunk import phantom_tomogram, write_objects, write_volume
    from tomochunk.io.objects import validate_objects

    stores = []
    for i, name in enumerate(("TS_01", "TS_02")):
        _, _, lab = phantom_tomogram((32, 48, 48), 2, snr=None, voxel_size=10.0, seed=i, n_objects=6)
        write_volume(np.asarray(lab), d / f"{name}.zarr", voxel_size=10.0, label=True, levels=1)
        stores.append(d / f"{name}.zarr")
    files = {}
    for ext in ("xml", "xlsx", "csv"):
        _tomochunk("pick", *stores, "--method", "cc", "-o", d / f"picks.{ext}")
    reference = pd.read_csv(d / "picks.csv")  # the same picks, read with pandas, not with tomochunk
    names = _tomo_names(d / "picks.csv")
    if names is not None:
        reference["tomo"] = reference["tomo_idx"].astype(str).map(names)
    else:
        reference["tomo"] = reference["tomo_idx"]
    reference = reference.rename(columns={"cluster_size": "size"})
    for ext in ("xml", "xlsx"):
        files[d / f"picks.{ext}"] = reference
    rng = np.random.default_rng(0)
    n = 8
    full = validate_objects(pd.DataFrame({
        "tomo": ["TS_01"] * 4 + ["TS_02"] * 4, "class_label": rng.integers(1, 4, n),
        "x": rng.uniform(0, 100, n), "y": rng.uniform(0, 100, n), "z": rng.uniform(0, 50, n),
        "phi": rng.uniform(-180, 180, n), "psi": rng.uniform(-180, 180, n), "the": rng.uniform(0, 180, n),
        "score": rng.uniform(0, 1, n), "size": rng.integers(10, 100, n), "obj_id": np.arange(1, n + 1)}),
        voxel_size=10.0)
    for ext in ("xml", "xlsx", "csv"):
        write_objects(full, d / f"full.{ext}")
        files[d / f"full.{ext}"] = full
    return files


def _tomo_names(path: Path):
    """The ``{index: name}`` map tomochunk keeps beside a DeepFinder list (read as plain JSON)."""
    from tomochunk.io.objects.deepfinder import tomo_map_path

    side = tomo_map_path(path)
    return json.loads(side.read_text())["tomograms"] if side.exists() else None


def _compare(path, objl, ref):
    """Problems found between DeepFinder's objects and the reference list (empty: they agree)."""
    problems = []
    if len(objl) != len(ref):
        return [f"{len(objl)} objects, expected {len(ref)}"], float("nan")
    names = _tomo_names(path)
    tomo = [o["tomo_idx"] for o in objl]
    if any(not isinstance(t, int) for t in tomo):
        problems.append("tomo_idx not integers")
    elif names is None:
        problems.append("no tomos.json name map beside the file")
    elif [names.get(str(t)) for t in tomo] != ref["tomo"].astype(str).tolist():
        problems.append("tomo_idx -> name differs")
    if [o["label"] for o in objl] != ref["class_label"].astype(int).tolist():
        problems.append("class labels differ")
    got = np.array([[o["x"], o["y"], o["z"]] for o in objl], float)
    d = float(np.abs(got - ref[["x", "y", "z"]].to_numpy(float)).max()) if len(ref) else 0.0
    if d > 1e-6:
        problems.append(f"coordinates differ by up to {d:.3g} voxels")
    if all(c in ref.columns for c in ("phi", "psi", "the")):
        ang = np.array([[o["phi"], o["psi"], o["the"]] for o in objl], float)
        da = float(np.abs(ang - ref[["phi", "psi", "the"]].to_numpy(float)).max())
        if not da <= 1e-6:
            problems.append(f"angles differ by up to {da:.3g} degrees")
    if "size" in ref.columns and [o["cluster_size"] for o in objl] != ref["size"].astype(int).tolist():
        problems.append("cluster sizes differ")
    return problems, d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--df-python", default=os.environ.get("TOMOCHUNK_DEEPFINDER_PYTHON", "/work/venvs/df/bin/python"))
    ap.add_argument("--keep", default=None, help="write the files here instead of a temporary folder")
    args = ap.parse_args(argv)
    if not Path(args.df_python).exists():
        print(f"no DeepFinder venv at {args.df_python} (pass --df-python)")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.keep or tmp)
        d.mkdir(parents=True, exist_ok=True)
        files = _inputs(d)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        r = subprocess.run([args.df_python, "-W", "ignore", "-c", DF_SIDE, str(d / "df.json"), *map(str, files)],
                           env=env, capture_output=True, text=True, timeout=600)
        if r.returncode:
            print(r.stderr[-3000:])
            return 2
        got = json.loads((d / "df.json").read_text())
        bad = 0
        print(f"{'file':<12} {'written by':<22} {'DeepFinder read it':<20} {'objects':>7}  agreement")
        for path, ref in files.items():
            res = got[str(path)]
            who = "tomochunk pick (CLI)" if path.name.startswith("picks") else "write_objects"
            if not res["ok"]:
                print(f"{path.name:<12} {who:<22} {'no':<20} {'':>7}  {res['error']}")
                bad += path.suffix != ".csv"
                continue
            problems, dmax = _compare(path, res["objects"], ref)
            verdict = "tomo_idx, classes, coordinates" + (", angles" if "phi" in ref.columns else "") + \
                ", cluster sizes agree" + f" (max coordinate difference {dmax:.2g})" if not problems else \
                "; ".join(problems)
            print(f"{path.name:<12} {who:<22} {'yes':<20} {len(res['objects']):>7}  {verdict}")
            bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
