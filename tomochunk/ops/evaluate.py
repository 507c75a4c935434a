"""Match predicted objects against ground truth and score the detection.

Three matching rules are available in :func:`evaluate`:

``"hungarian"``
    Optimal one-to-one matching per tomogram and class: the largest number
    of (prediction, truth) pairs within ``max_dist``, and among those the
    smallest total distance (``scipy.optimize.linear_sum_assignment`` on each
    connected component of the ``cKDTree`` neighbour graph).
``"deepfinder"``
    DeepFinder's ``Evaluator`` semantics, so that figures compare with
    published ones. Per tomogram and regardless of class, a truth object is
    paired with a prediction only when exactly one prediction lies within
    ``max_dist`` (inclusive); a truth with none or several is missed
    (predicted as background), and a prediction that is the unique neighbour
    of no truth is a false positive (true background). A prediction that is
    the unique neighbour of several truths pairs with each. The pairs form
    a confusion matrix over class labels (0 = background) and, per class
    ``k``: ``tp`` = pairs (k, k), ``fp`` = pairs (j != k, k), ``fn`` = pairs
    (k, j != k), so a class confusion counts as a miss of one class and a
    false alarm of the other.
``"czii"``
    The metric of the CZII cryo-ET object identification challenge
    (Kaggle, 2024-25), per class: a truth object is hit when any prediction
    of that class lies within ``radius_factor`` (0.5) × its particle radius;
    ``tp`` = truths hit, ``fp`` = predictions - tp, ``fn`` = truths - tp,
    summed over tomograms; ``fbeta`` with beta = 4 (recall-weighted); the
    overall score is the ``weights``-weighted mean of the class F-betas.

Precision, recall and F1 that divide 0 by 0 are NaN (as pycm reports them
for DeepFinder), except for ``"czii"``, which uses 0 as the challenge does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .._log import get_logger
from ..errors import ValueProblem
from .._schema import validate_objects

log = get_logger(__name__)

__all__ = ["evaluate", "plot_threshold_curve", "CZII_RADII", "CZII_WEIGHTS"]

#: Particle radii (Å) and weights of the CZII challenge, by pickable object name.
CZII_RADII = {"apo-ferritin": 60.0, "beta-amylase": 65.0, "beta-galactosidase": 90.0,
              "ribosome": 150.0, "thyroglobulin": 130.0, "virus-like-particle": 135.0}
CZII_WEIGHTS = {"apo-ferritin": 1.0, "beta-amylase": 0.0, "beta-galactosidase": 2.0,
                "ribosome": 1.0, "thyroglobulin": 2.0, "virus-like-particle": 1.0}

_METHODS = ("hungarian", "deepfinder", "czii")


# --------------------------------------------------------------------------- helpers
def _div(a, b, zero=np.nan):
    return float(a) / float(b) if b else zero


def _coords(df, unit, which):
    xyz = df[["x", "y", "z"]].to_numpy(np.float64)
    if unit == "angstrom":
        vs = df.attrs.get("voxel_size")
        if vs is None:
            raise ValueProblem(f"unit='angstrom' needs the {which} list's attrs['voxel_size']")
        xyz = xyz * float(vs)
    return xyz


def _groups(pred, truth):
    """Yield (tomo key, pred positional index, truth positional index)."""
    hp, ht = "tomo" in pred.columns, "tomo" in truth.columns
    if hp and ht:
        kp = pred["tomo"].astype(str).to_numpy()
        kt = truth["tomo"].astype(str).to_numpy()
    elif hp or ht:
        one = pred if hp else truth
        if one["tomo"].nunique() > 1:
            raise ValueProblem("the {} list has several tomograms but the {} list has no 'tomo' column".format(
                "predicted" if hp else "truth", "truth" if hp else "predicted"))
        kp, kt = np.zeros(len(pred), object), np.zeros(len(truth), object)
        kp[:], kt[:] = "", ""
    else:
        kp, kt = np.full(len(pred), "", object), np.full(len(truth), "", object)
    if hp and ht and len(kp) and len(kt) and not set(kp) & set(kt):
        # every object would count as a miss or a false positive: the names came from different rules
        raise ValueProblem(f"the two lists share no tomogram (predicted: {sorted(set(kp))[:3]}, truth: "
                           f"{sorted(set(kt))[:3]}); give both the same 'tomo' names")
    keys = list(dict.fromkeys(list(kt) + list(kp)))
    for k in keys:
        yield k, np.flatnonzero(kp == k), np.flatnonzero(kt == k)


def _hungarian_pairs(a, b, max_dist):
    """Maximum-cardinality, then minimum-distance, one-to-one matching within max_dist."""
    if len(a) == 0 or len(b) == 0:
        return np.empty(0, int), np.empty(0, int)
    e = cKDTree(a).sparse_distance_matrix(cKDTree(b), max_dist, output_type="ndarray")
    if len(e) == 0:
        return np.empty(0, int), np.empty(0, int)
    na, nb = len(a), len(b)
    g = coo_matrix((np.ones(len(e)), (e["i"], na + e["j"])), shape=(na + nb, na + nb))
    _, comp = connected_components(g, directed=False)
    ec = comp[e["i"]]
    order = np.argsort(ec, kind="stable")
    e, ec = e[order], ec[order]
    bounds = np.flatnonzero(np.diff(ec)) + 1
    ia, ib = [], []
    for chunk in np.split(e, bounds):
        ua, ra = np.unique(chunk["i"], return_inverse=True)
        ub, rb = np.unique(chunk["j"], return_inverse=True)
        if len(chunk) == 1:
            ia.append(ua), ib.append(ub)
            continue
        # Every edge is worth more than any sum of distances, so the number of
        # pairs is maximised first and the total distance second.
        big = (float(max_dist) + 1.0) * (min(len(ua), len(ub)) + 1)
        cost = np.zeros((len(ua), len(ub)))
        edge = np.zeros_like(cost, bool)
        cost[ra, rb] = chunk["v"] - big
        edge[ra, rb] = True
        r, c = linear_sum_assignment(cost)
        ok = edge[r, c]
        ia.append(ua[r[ok]]), ib.append(ub[c[ok]])
    return np.concatenate(ia), np.concatenate(ib)


def _row(tp, fp, fn, n_true, n_pred, zero=np.nan):
    return {"n_truth": int(n_true), "n_pred": int(n_pred), "tp": int(tp), "fp": int(fp), "fn": int(fn),
            "precision": _div(tp, tp + fp, zero), "recall": _div(tp, tp + fn, zero),
            "f1": _div(2 * tp, 2 * tp + fp + fn, zero)}


def _resolve(mapping, names, what):
    """{label or name: value} -> {label: value}."""
    if mapping is None:
        return {}
    inv = {v: k for k, v in names.items()}
    out = {}
    for k, v in mapping.items():
        if isinstance(k, str) and not k.isdigit():
            if k not in inv:
                continue  # a class the lists do not name (e.g. the CZII defaults)
            out[int(inv[k])] = float(v)
        else:
            out[int(k)] = float(v)
    return out


# --------------------------------------------------------------------------- evaluate
def evaluate(pred, truth, *, max_dist=None, method="hungarian", radii=None, weights=None,
             beta=4.0, radius_factor=0.5, unit="voxel"):
    """Score predicted objects against ground truth, per class and overall.

    Parameters
    ----------
    pred, truth : pandas.DataFrame
        Object lists. Objects only match within the same ``tomo`` (when the
        lists have that column).
    max_dist : float
        Largest distance of a match (inclusive), in ``unit``; needed by
        ``"hungarian"`` and ``"deepfinder"``.
    method : {"hungarian", "deepfinder", "czii"}
        The matching rule; see the module docstring.
    radii : dict, optional
        ``"czii"`` only: particle radius per class, keyed by label or by
        name (names as in ``attrs["classes"]``), in ``unit``.
    weights : dict, optional
        ``"czii"`` only: class weights for the overall F-beta (default 1).
    beta : float
        ``"czii"`` F-beta parameter (4 in the challenge).
    radius_factor : float
        ``"czii"``: a hit lies within ``radius_factor * radius``.
    unit : {"voxel", "angstrom"}
        Distances in voxels, or in Å using each list's
        ``attrs["voxel_size"]`` (lists at different binnings then compare).

    Returns
    -------
    pandas.DataFrame
        Indexed by class label plus an ``"all"`` row, with columns
        ``name`` (when class names are known), ``n_truth, n_pred, tp, fp, fn,
        precision, recall, f1`` and, for ``"czii"``, ``fbeta, weight``. The
        ``"all"`` row sums the class counts (micro average); for ``"czii"``
        its ``fbeta`` is the weighted mean of the class F-betas, the
        challenge score.

    Examples
    --------
    >>> truth = pd.DataFrame({"x": [10., 30.], "y": [10., 30.], "z": [5., 5.]})
    >>> pred = pd.DataFrame({"x": [11., 80.], "y": [10., 30.], "z": [5., 5.]})
    >>> res = evaluate(pred, truth, max_dist=3)
    >>> res[["tp", "fp", "fn"]].loc["all"].tolist(), float(res.loc["all", "f1"])
    ([1, 1, 1], 0.5)
    """
    if method not in _METHODS:
        raise ValueProblem(f"method must be one of {', '.join(_METHODS)}, not {method!r}")
    if unit not in ("voxel", "angstrom"):
        raise ValueProblem(f"unit must be 'voxel' or 'angstrom', not {unit!r}")
    pred, truth = validate_objects(pred), validate_objects(truth)
    if unit == "voxel":
        vp, vt = pred.attrs.get("voxel_size"), truth.attrs.get("voxel_size")
        if vp is not None and vt is not None and not np.isclose(vp, vt):
            raise ValueProblem(f"predicted (voxel size {vp} Å) and truth ({vt} Å) lists differ in voxel size; "
                               "use unit='angstrom' or scale_coordinates")
    names = {**(pred.attrs.get("classes") or {}), **(truth.attrs.get("classes") or {})}
    if method != "czii":
        if max_dist is None or not np.isfinite(max_dist) or max_dist < 0:
            raise ValueProblem(f"method={method!r} needs max_dist >= 0, got {max_dist!r}")
    xp, xt = _coords(pred, unit, "predicted"), _coords(truth, unit, "truth")
    lp, lt = pred["class_label"].to_numpy(), truth["class_label"].to_numpy()
    classes = sorted(set(lp.tolist()) | set(lt.tolist()))

    if method == "czii":
        rad = _resolve(radii, names, "radii")
        wts = _resolve(weights, names, "weights")
        classes = sorted(set(classes) | set(rad))
        miss = [c for c in classes if c not in rad]
        if miss:
            raise ValueProblem(f"method='czii' needs radii for class(es) {', '.join(map(str, miss))}")
        return _czii(xp, lp, xt, lt, pred, truth, classes, rad, wts, beta, radius_factor, names)

    counts = {c: [0, 0, 0] for c in classes}  # tp, fp, fn
    for _, ip, it in _groups(pred, truth):
        if method == "hungarian":
            for c in classes:
                sp, st = ip[lp[ip] == c], it[lt[it] == c]
                a, _ = _hungarian_pairs(xt[st], xp[sp], max_dist)
                counts[c][0] += len(a)
                counts[c][1] += len(sp) - len(a)
                counts[c][2] += len(st) - len(a)
        else:
            yt, yp = _deepfinder_pairs(xt[it], lt[it], xp[ip], lp[ip], max_dist)
            for c in classes:
                counts[c][0] += int(np.sum((yt == c) & (yp == c)))
                counts[c][1] += int(np.sum((yt != c) & (yp == c)))
                counts[c][2] += int(np.sum((yt == c) & (yp != c)))
    rows = {}
    for c in classes:
        tp, fp, fn = counts[c]
        rows[c] = _row(tp, fp, fn, np.sum(lt == c), np.sum(lp == c))
    tot = np.sum([counts[c] for c in classes], axis=0) if classes else np.zeros(3, int)
    rows["all"] = _row(*tot, len(truth), len(pred))
    return _table(rows, names)


def _deepfinder_pairs(xt, lt, xp, lp, max_dist):
    """(truth label, predicted label) pairs as DeepFinder's Evaluator builds them."""

    if len(xp) == 0:
        return lt.copy(), np.zeros(len(lt), lt.dtype)
    if len(xt) == 0:
        return np.zeros(len(lp), lp.dtype), lp.copy()
    near = cKDTree(xp).query_ball_point(xt, max_dist)
    n_near = np.fromiter((len(n) for n in near), int, len(near))
    uniq = n_near == 1
    j = np.fromiter((n[0] if len(n) == 1 else -1 for n in near), int, len(near))
    yt = list(lt)
    yp = np.where(uniq, lp[np.maximum(j, 0)], 0).tolist()
    matched = np.zeros(len(xp), bool)
    matched[j[uniq]] = True
    yt += [0] * int((~matched).sum())
    yp += lp[~matched].tolist()
    return np.asarray(yt), np.asarray(yp)


def _czii(xp, lp, xt, lt, pred, truth, classes, rad, wts, beta, factor, names):

    rows, b2 = {}, float(beta) ** 2
    score_num = score_den = 0.0
    tot = np.zeros(3, int)
    groups = list(_groups(pred, truth))
    for c in classes:
        tp = fp = fn = 0
        r = factor * rad[c]
        for _, ip, it in groups:
            sp, st = ip[lp[ip] == c], it[lt[it] == c]
            if len(st) == 0:
                fp += len(sp)
                continue
            if len(sp) == 0:
                fn += len(st)
                continue
            hits = cKDTree(xp[sp]).query_ball_tree(cKDTree(xt[st]), r)
            # A truth hit by several predictions counts once, as in the challenge.
            n_hit = len({k for h in hits for k in h})
            tp += n_hit
            fp += len(sp) - n_hit
            fn += len(st) - n_hit
        row = _row(tp, fp, fn, np.sum(lt == c), np.sum(lp == c), zero=0.0)
        p, rc = row["precision"], row["recall"]
        row["fbeta"] = (1 + b2) * p * rc / (b2 * p + rc) if (p + rc) > 0 else 0.0
        row["weight"] = wts.get(c, 1.0)
        score_num += row["fbeta"] * row["weight"]
        score_den += row["weight"]
        tot += (tp, fp, fn)
        rows[c] = row
    row = _row(*tot, len(truth), len(pred), zero=0.0)
    row["fbeta"] = score_num / score_den if score_den else 0.0
    row["weight"] = score_den
    rows["all"] = row
    return _table(rows, names)


def _table(rows, names):
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index = pd.Index(list(rows), dtype=object, name="class_label")
    if names:
        df.insert(0, "name", [names.get(k, "") if k != "all" else "all" for k in rows])
    return df


# --------------------------------------------------------------------------- threshold curve
def plot_threshold_curve(pred, truth, *, max_dist=None, path, thresholds=None, method="hungarian",
                         class_label=None, score=None, **kw):
    """Plot precision, recall and F1 against a score threshold, to PNG.

    Predictions with ``score >= threshold`` are kept at each threshold (as
    DeepFinder's ``get_evaluation_wrt_detection_score`` does with cluster
    sizes) and scored with :func:`evaluate`.

    Parameters
    ----------
    pred, truth : pandas.DataFrame
        Object lists; ``pred`` needs a ``score`` column (else ``size`` is used).
    max_dist : float
        Passed to :func:`evaluate`.
    path : path-like
        PNG to write.
    thresholds : array_like, optional
        Default: 50 thresholds spanning the score quantiles.
    method : str
        Passed to :func:`evaluate`, with ``**kw`` (e.g. ``radii``).
    class_label : int or str, optional
        Plot this class's row instead of ``"all"``.
    score : str, optional
        The column to threshold (default ``score``, else ``size``).

    Returns
    -------
    pandas.DataFrame
        One row per threshold: ``threshold, n_pred, tp, fp, fn, precision,
        recall, f1`` (and ``fbeta`` for ``"czii"``).

    Examples
    --------
    >>> table = plot_threshold_curve(pred, truth, max_dist=5, path="pr.png")  # doctest: +SKIP
    >>> table.loc[table["f1"].idxmax(), "threshold"]  # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    pred = validate_objects(pred)
    col = score or ("score" if "score" in pred.columns else "size" if "size" in pred.columns else None)
    if col is None or col not in pred.columns:
        raise ValueProblem("plot_threshold_curve needs a 'score' (or 'size') column in the predictions")
    s = pred[col].astype("float64").to_numpy()
    if thresholds is None:
        thresholds = np.unique(np.quantile(s[np.isfinite(s)], np.linspace(0, 1, 50))) if len(s) else np.zeros(1)
    thresholds = np.asarray(thresholds, float)
    key = "all" if class_label is None else class_label
    recs = []
    for t in thresholds:
        sub = pred[s >= t]
        sub.attrs = dict(pred.attrs)
        res = evaluate(sub, truth, max_dist=max_dist, method=method, **kw)
        if key not in res.index:
            k2 = {v: k for k, v in res.get("name", pd.Series(dtype=object)).items()}.get(key, key)
            if k2 not in res.index:
                raise ValueProblem(f"class {class_label!r} is in neither list")
            key = k2
        r = res.loc[key]
        rec = {"threshold": float(t), "n_pred": int(r["n_pred"]), "tp": int(r["tp"]), "fp": int(r["fp"]),
               "fn": int(r["fn"]), "precision": r["precision"], "recall": r["recall"], "f1": r["f1"]}
        if "fbeta" in res.columns:
            rec["fbeta"] = r["fbeta"]
        recs.append(rec)
    table = pd.DataFrame(recs)

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    ax.plot(table["threshold"], table["precision"], label="precision")
    ax.plot(table["threshold"], table["recall"], label="recall")
    ax.plot(table["threshold"], table["f1"], label="F1")
    if "fbeta" in table.columns:
        ax.plot(table["threshold"], table["fbeta"], label=f"F{kw.get('beta', 4):g}")
    if table["f1"].notna().any():
        best = table.loc[table["f1"].idxmax()]
        ax.set_title(f"{method}, class {key}: max F1 {best['f1']:.3f} at {col} >= {best['threshold']:.3g} "
                     f"(P {best['precision']:.2f}, R {best['recall']:.2f})", fontsize=9)
    ax.set_xlabel(f"{col} threshold")
    ax.set_ylabel("metric")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    log.debug("wrote threshold curve to %s", path)
    return table
