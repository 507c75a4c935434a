#!/usr/bin/env python3
"""Compare tomochunk's object-list IO and ``evaluate(method="deepfinder")`` with DeepFinder itself.

DeepFinder (PyPI ``cryoet-deepfinder``, GPL) runs in its own virtual
environment (default ``/work/venvs/df``; override with ``--df-python``); this
script only calls it in a subprocess and compares outputs, it copies no code.

Checks:

1. XML and .xlsx files written by DeepFinder's ``objl.write_xml`` /
   ``write_excel`` read identically with :func:`tomochunk.read_objects`
   (DeepFinder rounds coordinates and angles to 3 decimals in XML, so the
   comparison is against DeepFinder's own ``read_xml`` of the same file).
2. Files written by :func:`tomochunk.write_objects` read identically with
   DeepFinder's ``read_xml`` / ``read_excel``.
3. ``Evaluator(...).get_evaluation()`` precision, recall, F1, TP, FP, FN per
   class equal ``evaluate(method="deepfinder")`` on DeepFinder's own test
   cases (identity, delete 10 predictions, delete 10 truths) and on harder
   ones (jitter, ambiguous neighbours, class confusions, extras, cluster-size
   thresholds), and the time each takes.

Run::

    PYTHONPATH=. .venv/bin/python benchmarks/compare_deepfinder_objects.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tomochunk import evaluate, read_objects, write_objects
from tomochunk.io.objects import validate_objects

# Runs inside DeepFinder's venv: only calls its public functions.
DF_SIDE = textwrap.dedent(r'''
    import json, sys, time, math
    import deepfinder.utils.objl as ol
    import deepfinder.utils.eval as ev

    job = json.load(open(sys.argv[1]))
    out = {}

    def to_objl(rows):
        objl = []
        for r in rows:
            ol.add_obj(objl, label=r["class_label"], coord=(r["z"], r["y"], r["x"]),
                       obj_id=r.get("obj_id"), tomo_idx=r.get("tomo"),
                       orient=(r.get("psi"), r.get("phi"), r.get("the")), cluster_size=r.get("size"))
        return objl

    # 1. DeepFinder writes, 2. DeepFinder reads ours
    for name, rows in job["write"].items():
        objl = to_objl(rows)
        ol.write_xml(objl, job["dir"] + f"/{name}_df.xml")
        ol.write_excel(objl, job["dir"] + f"/{name}_df.xlsx")
        out[f"read_df_{name}.xml"] = ol.read_xml(job["dir"] + f"/{name}_df.xml")
        out[f"read_df_{name}.xlsx"] = ol.read_excel(job["dir"] + f"/{name}_df.xlsx")
    for name in job["read"]:
        path = job["dir"] + "/" + name
        out[f"read_ours_{name}"] = ol.read_xml(path) if path.endswith(".xml") else ol.read_excel(path)

    # 3. Evaluator
    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")

    res = {}
    for case in job["eval"]:
        dt = {k: {"object_list": to_objl(v)} for k, v in case["truth"].items()}
        dp = {k: {"object_list": to_objl(v)} for k, v in case["pred"].items()}
        t0 = time.perf_counter()
        e = ev.Evaluator(dt, dp, dist_thr=case["max_dist"]).get_evaluation(score_thr=case.get("score_thr"))
        dt_s = time.perf_counter() - t0
        for _ in range(2):  # best of 3
            t0 = time.perf_counter()
            ev.Evaluator(dt, dp, dist_thr=case["max_dist"]).get_evaluation(score_thr=case.get("score_thr"))
            dt_s = min(dt_s, time.perf_counter() - t0)
        g = e["global"]
        cls = {}
        for c in g["cmat"].classes:
            if int(c) == 0:
                continue
            cls[str(int(c))] = {"tp": int(g["n_tp"][c]), "fp": int(g["n_fp"][c]), "fn": int(g["n_fn"][c]),
                                "precision": num(g["pre"][c]), "recall": num(g["rec"][c]), "f1": num(g["f1s"][c])}
        res[case["name"]] = {"classes": cls, "seconds": dt_s}
    out["eval"] = res
    json.dump(out, open(sys.argv[2], "w"), default=lambda o: o.item() if hasattr(o, "item") else str(o))
''')


def _objects(n_tomos, n_obj, n_classes, seed, *, angles=True, floats=True):
    rng = np.random.default_rng(seed)
    n = n_tomos * n_obj
    pos = rng.uniform(0, 1, (n, 3)) * [500, 500, 200]
    if not floats:
        pos = np.floor(pos)
    d = {"tomo": np.repeat(np.arange(n_tomos), n_obj), "class_label": rng.integers(1, n_classes + 1, n),
         "x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2]}
    if angles:
        d.update(phi=rng.uniform(-180, 180, n), psi=rng.uniform(-180, 180, n), the=rng.uniform(0, 180, n))
    d.update(size=rng.integers(1, 100, n), obj_id=np.arange(n))
    return validate_objects(pd.DataFrame(d))


def _rows(df):
    recs = []
    for r in df.to_dict("records"):
        recs.append({k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()
                     if not (isinstance(v, float) and math.isnan(v))})
    return recs


def _by_tomo(df):
    return {str(t): _rows(g) for t, g in df.groupby("tomo")}


def _df_objl_to_frame(objl):
    """DeepFinder's list of dicts as a tomochunk DataFrame."""
    rows = []
    for o in objl:
        r = {"tomo": o["tomo_idx"], "class_label": o["label"], "x": o["x"], "y": o["y"], "z": o["z"],
             "phi": o["phi"], "psi": o["psi"], "the": o["the"], "size": o["cluster_size"], "obj_id": o["obj_id"]}
        rows.append({k: v for k, v in r.items() if v is not None})
    return validate_objects(pd.DataFrame(rows))


def _eval_cases(seed=0):
    cases = []
    rng = np.random.default_rng(seed)
    # DeepFinder's own unit tests (integer positions, dist_thr = 0)
    t = _objects(5, 100, 3, seed, angles=False, floats=False)
    cases.append(("identity", t, t, 0))
    t1 = _objects(1, 100, 1, seed + 1, angles=False, floats=False)
    cases.append(("delete10_pred (recall 0.9)", t1.iloc[10:], t1, 0))
    cases.append(("delete10_truth (precision 0.9)", t1, t1.iloc[10:], 0))
    # harder: jitter, extras, misses, class swaps, crowded neighbours
    for k, (n_obj, md) in enumerate([(200, 3.0), (400, 6.0), (1000, 10.0)]):
        tr = _objects(4, n_obj, 3, seed + 10 + k, angles=False)
        pr = tr.copy()
        pr[["x", "y", "z"]] += rng.normal(0, md / 2.5, (len(pr), 3))
        swap = rng.random(len(pr)) < 0.05
        pr.loc[swap, "class_label"] = pr.loc[swap, "class_label"] % 3 + 1
        extra = _objects(4, n_obj // 10, 3, seed + 20 + k, angles=False)
        pr = pd.concat([pr.sample(frac=0.9, random_state=k), extra], ignore_index=True)
        cases.append((f"jitter n={4 * n_obj} max_dist={md:g}", pr, tr, md))
    return cases


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--df-python", default="/work/venvs/df/bin/python")
    args = ap.parse_args(argv)
    if not Path(args.df_python).exists():
        print(f"DeepFinder venv not found ({args.df_python}); install cryoet-deepfinder there first")
        return 2

    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        written = {"angles": _objects(2, 50, 3, 1), "plain": _objects(1, 30, 2, 2, angles=False)}
        written["plain"] = written["plain"].drop(columns=["obj_id"])
        # ours, for DeepFinder to read
        ours = []
        for name, df in written.items():
            for ext in ("xml", "xlsx"):
                write_objects(df, tmp / f"{name}_ours.{ext}")
                ours.append(f"{name}_ours.{ext}")
        cases = _eval_cases()
        job = {"dir": str(tmp), "write": {k: _rows(v) for k, v in written.items()}, "read": ours,
               "eval": [{"name": n, "pred": _by_tomo(p), "truth": _by_tomo(t), "max_dist": md}
                        for n, p, t, md in cases]}
        # a cluster-size threshold run, as get_evaluation(score_thr=...) does
        n, p, t, md = cases[3]
        job["eval"].append({"name": "jitter + cluster_size >= 50", "pred": _by_tomo(p), "truth": _by_tomo(t),
                            "max_dist": md, "score_thr": 50})
        cases.append(("jitter + cluster_size >= 50", p[p["size"] >= 50], t, md))
        (tmp / "job.json").write_text(json.dumps(job))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        r = subprocess.run([args.df_python, "-W", "ignore", "-c", DF_SIDE, str(tmp / "job.json"),
                            str(tmp / "out.json")], env=env, capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-3000:])
            return 1
        out = json.loads((tmp / "out.json").read_text())

        print("== object-list files")
        for name, df in written.items():
            for ext in ("xml", "xlsx"):
                mine = read_objects(tmp / f"{name}_df.{ext}")
                theirs = _df_objl_to_frame(out[f"read_df_{name}.{ext}"])
                same = _frames_equal(mine, theirs, exact=ext == "xml")
                # and DeepFinder's file holds the data to its 3 decimals
                close = np.allclose(mine[["x", "y", "z"]], df[["x", "y", "z"]], atol=5e-4)
                print(f"  DeepFinder-written {name}.{ext}: read_objects == DeepFinder's reader: {same}; "
                      f"within 5e-4 of the original: {close}")
                ok &= same and close
                back = _df_objl_to_frame(out[f"read_ours_{name}_ours.{ext}"])
                same2 = _frames_equal(back, df, exact=ext == "xml")
                print(f"  tomochunk-written {name}.{ext}: DeepFinder reads it back identically: {same2}")
                ok &= same2

        print("== Evaluator vs evaluate(method='deepfinder')")
        t_df = t_tc = 0.0
        for (name, p, t, md) in cases:
            ref = out["eval"][name]
            res = evaluate(p, t, max_dist=md, method="deepfinder")  # also warms up imports
            dt = np.inf
            for _ in range(3):  # best of 3, like the DeepFinder side
                t0 = time.perf_counter()
                evaluate(p, t, max_dist=md, method="deepfinder")
                dt = min(dt, time.perf_counter() - t0)
            t_df += ref["seconds"]
            t_tc += dt
            match = True
            for c, vals in ref["classes"].items():
                row = res.loc[int(c)]
                for k, v in vals.items():
                    a = float(row[k])
                    if not ((math.isnan(a) and math.isnan(v)) or abs(a - v) < 1e-12):
                        match = False
                        print(f"    class {c} {k}: DeepFinder {v} tomochunk {a}")
            summary = ", ".join(f"class {c}: P {v['precision']:.4f} R {v['recall']:.4f} F1 {v['f1']:.4f}"
                                for c, v in ref["classes"].items())
            print(f"  {name}: identical {match}  [{summary}]  "
                  f"DeepFinder {ref['seconds'] * 1e3:.1f} ms, tomochunk {dt * 1e3:.1f} ms")
            ok &= match
        print(f"  total time: DeepFinder {t_df:.3f} s, tomochunk {t_tc:.3f} s, "
              f"speed-up {t_df / max(t_tc, 1e-9):.1f}x")
    print("ALL IDENTICAL" if ok else "DIFFERENCES FOUND")
    return 0 if ok else 1


def _frames_equal(a, b, exact=True):
    cols = [c for c in a.columns if c in b.columns]
    if set(a.columns) != set(b.columns) or len(a) != len(b):
        print(f"    columns/rows differ: {list(a.columns)} vs {list(b.columns)}, {len(a)} vs {len(b)}")
        return False
    try:
        pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=exact, rtol=1e-14, check_dtype=False)
        return True
    except AssertionError as e:
        print("    " + str(e).replace("\n", "\n    ")[:800])
        return False


if __name__ == "__main__":
    sys.exit(main())
