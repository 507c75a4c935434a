"""Our object-list files, read the way the other tools read them (their own definitions, not our readers).

- RELION: ``Euler_angles2matrix`` as written in RELION's ``src/euler.cpp`` (transcribed below), which
  RELION uses as the particle->tomogram matrix (``ParticleSet::getMatrix3x3``).
- Dynamo: ``dynamotable`` reads the table, ``eulerangles`` (its own Dynamo and RELION conventions)
  converts the angles.
- DeepFinder: a parser that does what DeepFinder's ``read_xml`` does (``int(tomo_idx)`` ...).
- IMOD: ``imodmodel`` reads the model. cet_pick: ``pandas.read_csv(sep="\\t")`` and ``astype(int32)``,
  as cet_pick's loaders do. copick: tests/test_copick_interop.py (copick itself, in its own venv).
"""

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tomochunk import read_objects, write_objects
from tomochunk._geometry import euler_to_matrix, tom_to_dynamo
from tomochunk.io.objects import validate_objects, write_image_list


def relion_euler_angles2matrix(alpha, beta, gamma):
    """RELION's ``Euler_angles2matrix(alpha, beta, gamma, A)`` (src/euler.cpp), vectorised."""
    a, b, g = (np.deg2rad(np.asarray(v, float)) for v in (alpha, beta, gamma))
    ca, cb, cg, sa, sb, sg = np.cos(a), np.cos(b), np.cos(g), np.sin(a), np.sin(b), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    A = np.empty(a.shape + (3, 3))
    A[..., 0, 0] = cg * cc - sg * sa
    A[..., 0, 1] = cg * cs + sg * ca
    A[..., 0, 2] = -cg * sb
    A[..., 1, 0] = -sg * cc - cg * sa
    A[..., 1, 1] = -sg * cs + cg * ca
    A[..., 1, 2] = sg * sb
    A[..., 2, 0] = sc
    A[..., 2, 1] = ss
    A[..., 2, 2] = cb
    return A


def deepfinder_read_xml(path):
    """What DeepFinder's ``read_xml`` does: ElementTree over <object> children, int() and float() casts."""
    objl = []
    for el in ET.parse(path).getroot():
        get = el.get
        obj = {"tomo_idx": int(get("tomo_idx")) if get("tomo_idx") is not None else None,
               "obj_id": int(get("obj_id")) if get("obj_id") is not None else None,
               "label": int(get("class_label")),
               "x": float(get("x")), "y": float(get("y")), "z": float(get("z")),
               "psi": float(get("psi")) if get("psi") is not None else None,
               "phi": float(get("phi")) if get("phi") is not None else None,
               "the": float(get("the")) if get("the") is not None else None,
               "cluster_size": int(get("cluster_size")) if get("cluster_size") is not None else None}
        objl.append(obj)
    return objl


def _objects(n=12, seed=5, tomos=("TS_01", "TS_02")):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"tomo": [tomos[i % len(tomos)] for i in range(n)], "class_label": rng.integers(1, 3, n),
                       "x": rng.uniform(0, 63, n), "y": rng.uniform(0, 63, n), "z": rng.uniform(0, 31, n),
                       "phi": rng.uniform(-180, 180, n), "psi": rng.uniform(-180, 180, n),
                       "the": rng.uniform(0.5, 179.5, n), "score": rng.uniform(0, 1, n),
                       "size": rng.integers(1, 99, n), "obj_id": np.arange(1, n + 1)})
    df = validate_objects(df, voxel_size=8.0, classes={1: "ribosome", 2: "proteasome"})
    df.attrs["shape"] = (32, 64, 64)
    return df


@pytest.mark.parametrize("mode", ["centered", "pixel"])
def test_relion_matrix_of_our_star_is_our_rotation(tmp_path, mode):
    import starfile

    df = _objects()
    write_objects(df, tmp_path / "p.star", coordinates=mode)
    t = starfile.read(tmp_path / "p.star")
    m = relion_euler_angles2matrix(t["rlnAngleRot"], t["rlnAngleTilt"], t["rlnAnglePsi"])
    np.testing.assert_allclose(m, euler_to_matrix(df["phi"], df["psi"], df["the"]), atol=1e-6)
    assert t["rlnTomoName"].tolist() == df["tomo"].tolist()
    assert t["rlnClassNumber"].tolist() == df["class_label"].tolist()
    np.testing.assert_allclose(t["rlnAutopickFigureOfMerit"], df["score"])


def test_relion_angles_of_a_relion_file_read_as_relions_matrix(tmp_path):
    import starfile

    rng = np.random.default_rng(2)
    ang = np.stack([rng.uniform(-180, 180, 8), rng.uniform(0, 180, 8), rng.uniform(-180, 180, 8)], -1)
    starfile.write({"particles": pd.DataFrame({"rlnTomoName": "TS_1", "rlnCoordinateX": 1.0, "rlnCoordinateY": 2.0,
                                               "rlnCoordinateZ": 3.0, "rlnAngleRot": ang[:, 0],
                                               "rlnAngleTilt": ang[:, 1], "rlnAnglePsi": ang[:, 2]})},
                   tmp_path / "r.star", float_format="%.17g")
    df = read_objects(tmp_path / "r.star")
    np.testing.assert_allclose(euler_to_matrix(df["phi"], df["psi"], df["the"]),
                               relion_euler_angles2matrix(ang[:, 0], ang[:, 1], ang[:, 2]), atol=1e-9)


def test_relion5_default_star_layout(tmp_path):
    """One particles block first, centred Å from the volume centre, the columns relion_tomo_import_particles reads."""
    df = _objects()
    write_objects(df, tmp_path / "p.star", tilt_series_pixel_size=2.0)
    text = (tmp_path / "p.star").read_text()
    blocks = [l for l in text.splitlines() if l.startswith("data_")]
    assert blocks == ["data_particles"]
    import starfile

    t = starfile.read(tmp_path / "p.star")
    for c, n in (("X", 64), ("Y", 64), ("Z", 32)):
        np.testing.assert_allclose(t[f"rlnCenteredCoordinate{c}Angst"], (df[c.lower()] - n / 2) * 8.0)
    assert set(t["rlnTomoTiltSeriesPixelSize"]) == {2.0}


def test_dynamo_table_angles_by_eulerangles_and_dynamotable(tmp_path):
    import dynamotable
    from eulerangles import convert_eulers, euler2matrix

    df = _objects()
    write_objects(df, tmp_path / "t.tbl")
    t = dynamotable.read(str(tmp_path / "t.tbl"), str(tmp_path / "t.doc"))
    dyn = t[["tdrot", "tilt", "narot"]].to_numpy()
    # eulerangles' own Dynamo -> RELION conversion, then RELION's matrix, is our rotation
    rel = convert_eulers(dyn, source_meta="dynamo", target_meta="relion")
    np.testing.assert_allclose(relion_euler_angles2matrix(rel[:, 0], rel[:, 1], rel[:, 2]),
                               euler_to_matrix(df["phi"], df["psi"], df["the"]), atol=1e-6)
    # eulerangles' Dynamo convention (zxz extrinsic, passive): our rotation is its matrix's inverse
    m = euler2matrix(dyn, axes="zxz", intrinsic=False, right_handed_rotation=True)
    np.testing.assert_allclose(np.swapaxes(m, -1, -2), euler_to_matrix(df["phi"], df["psi"], df["the"]), atol=1e-6)
    # positions, classes, tags, tomogram names through Dynamo's table map
    np.testing.assert_allclose(t["x"] + t["dx"], df["x"])
    assert t["class"].tolist() == df["class_label"].tolist() and t["tag"].tolist() == df["obj_id"].tolist()
    assert t["tomo_file"].tolist() == df["tomo"].tolist() and set(t["apix"]) == {8.0}
    np.testing.assert_allclose(tom_to_dynamo(df["phi"], df["psi"], df["the"]), dyn.T, atol=1e-9)
    back = read_objects(tmp_path / "t.tbl")
    pd.testing.assert_frame_equal(back, df.drop(columns="size"), rtol=1e-9, check_dtype=False)


def test_deepfinder_reads_our_xml_and_names_come_back(tmp_path):
    df = _objects()
    write_objects(df, tmp_path / "objl.xml")
    objl = deepfinder_read_xml(tmp_path / "objl.xml")
    assert [o["tomo_idx"] for o in objl] == [0 if t == "TS_01" else 1 for t in df["tomo"]]
    assert [o["label"] for o in objl] == df["class_label"].tolist()
    np.testing.assert_allclose([[o["x"], o["y"], o["z"]] for o in objl], df[["x", "y", "z"]].to_numpy())
    np.testing.assert_allclose([[o["phi"], o["psi"], o["the"]] for o in objl], df[["phi", "psi", "the"]].to_numpy())
    assert [o["cluster_size"] for o in objl] == df["size"].tolist()
    names = json.loads((tmp_path / "objl.xml.tomos.json").read_text())["tomograms"]
    assert names == {"0": "TS_01", "1": "TS_02"}
    back = read_objects(tmp_path / "objl.xml")
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    # integer tomograms: no name map, and a stale one is removed
    df_int = df.assign(tomo=df["tomo"].map({"TS_01": 4, "TS_02": 5}))
    write_objects(df_int, tmp_path / "objl.xml")
    assert not (tmp_path / "objl.xml.tomos.json").exists()
    assert {o["tomo_idx"] for o in deepfinder_read_xml(tmp_path / "objl.xml")} == {4, 5}


def test_exodeepfinder_csv_integer_tomo_idx(tmp_path):
    import csv

    df = _objects()
    write_objects(df, tmp_path / "objl.csv")
    with open(tmp_path / "objl.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["tomo_idx"]) for r in rows] == [0 if t == "TS_01" else 1 for t in df["tomo"]]
    assert [int(r["class_label"]) for r in rows] == df["class_label"].tolist()
    pd.testing.assert_frame_equal(read_objects(tmp_path / "objl.csv"), df, check_exact=True)


def test_imodmodel_reads_our_model(tmp_path):
    import imodmodel

    df = _objects()
    one = df[df["tomo"] == "TS_01"]
    write_objects(one, tmp_path / "m.mod")
    pts = imodmodel.read(tmp_path / "m.mod")
    model = imodmodel.ImodModel.from_file(tmp_path / "m.mod")
    assert [o.header.name for o in model.objects] == ["ribosome", "proteasome"]
    assert model.header.pixelsize == 8.0 and model.header.units == -10
    assert (model.header.xmax, model.header.ymax, model.header.zmax) == (64, 64, 32)
    for label in (1, 2):
        ours = one[one["class_label"] == label][["x", "y", "z"]].to_numpy()
        theirs = pts[pts["object_id"] == label - 1][["x", "y", "z"]].to_numpy()
        np.testing.assert_allclose(theirs, ours, rtol=1e-6)  # IMOD stores float32
    back = read_objects(tmp_path / "m.mod")
    assert back.attrs["classes"] == {1: "ribosome", 2: "proteasome"} and back.attrs["voxel_size"] == 8.0
    assert back.attrs["shape"] == (32, 64, 64)
    # a model IMOD users make: written by imodmodel itself, read as classes by object
    imodmodel.write(pd.DataFrame({"object_id": [0, 0, 1], "contour_id": [0, 1, 0], "x": [1.0, 2, 3],
                                  "y": [4.0, 5, 6], "z": [7.0, 8, 9]}), tmp_path / "theirs.mod")
    got = read_objects(tmp_path / "theirs.mod")
    assert got["class_label"].tolist() == [1, 1, 2] and got["z"].tolist() == [7.0, 8.0, 9.0]


def test_cet_pick_reads_our_lists(tmp_path):
    df = _objects()
    write_objects(df, tmp_path / "train_coords.txt", format="cet_pick_coords")
    write_image_list({"TS_01": "data/TS_01.rec", "TS_02": "data/TS_02.rec"}, tmp_path / "train_imgs.txt")
    # cet_pick: pd.read_csv(sep="\t"), then coordinates_table_to_dict: groupby image_name, astype(int32)
    coords = pd.read_csv(tmp_path / "train_coords.txt", sep="\t")
    images = pd.read_csv(tmp_path / "train_imgs.txt", sep="\t")
    assert images["image_name"].tolist() == ["TS_01", "TS_02"] and images["rec_path"].tolist()[0] == "data/TS_01.rec"
    root = {name: g[["x_coord", "y_coord", "z_coord"]].values.astype(np.int32) for name, g in coords.groupby("image_name")}
    for name in ("TS_01", "TS_02"):
        np.testing.assert_array_equal(root[name], np.rint(df[df["tomo"] == name][["x", "y", "z"]]).astype(np.int32))
    back = read_objects(tmp_path / "train_coords.txt")  # a .txt with cet_pick's header: the coordinate list
    assert back["tomo"].tolist() == df["tomo"].tolist()
    np.testing.assert_array_equal(back[["x", "y", "z"]], np.rint(df[["x", "y", "z"]]))


DF_PYTHON = Path(os.environ.get("TOMOCHUNK_DEEPFINDER_PYTHON", "/work/venvs/df/bin/python"))


@pytest.mark.skipif(not DF_PYTHON.exists(), reason="no DeepFinder venv (benchmarks/compare_deepfinder_objects.py)")
def test_deepfinder_itself_reads_our_xml(tmp_path):
    """DeepFinder's own read_xml, where its venv exists (the same one the benchmarks use)."""
    df = _objects()
    write_objects(df, tmp_path / "objl.xml")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    code = ("import json, sys; import deepfinder.utils.objl as ol; "
            "json.dump(ol.read_xml(sys.argv[1]), open(sys.argv[2], 'w'))")
    r = subprocess.run([str(DF_PYTHON), "-W", "ignore", "-c", code, str(tmp_path / "objl.xml"),
                        str(tmp_path / "out.json")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    objl = json.loads((tmp_path / "out.json").read_text())
    assert [o["tomo_idx"] for o in objl] == [0 if t == "TS_01" else 1 for t in df["tomo"]]
    assert [o["label"] for o in objl] == df["class_label"].tolist()
    np.testing.assert_allclose([[o["x"], o["y"], o["z"], o["phi"], o["psi"], o["the"]] for o in objl],
                               df[["x", "y", "z", "phi", "psi", "the"]].to_numpy())


@pytest.mark.skipif(not DF_PYTHON.exists(), reason="no DeepFinder venv (benchmarks/check_deepfinder_reader.py)")
def test_deepfinder_itself_reads_our_xlsx(tmp_path):
    """DeepFinder's read_excel casts "Tomo IDX" with int(): names become indices, their map beside the sheet."""
    pytest.importorskip("openpyxl")
    df = _objects()
    write_objects(df, tmp_path / "objl.xlsx")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    code = ("import json, sys; import deepfinder.utils.objl as ol; "
            "json.dump(ol.read_excel(sys.argv[1]), open(sys.argv[2], 'w'))")
    r = subprocess.run([str(DF_PYTHON), "-W", "ignore", "-c", code, str(tmp_path / "objl.xlsx"),
                        str(tmp_path / "out.json")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    objl = json.loads((tmp_path / "out.json").read_text())
    assert [o["tomo_idx"] for o in objl] == [0 if t == "TS_01" else 1 for t in df["tomo"]]
    assert [o["label"] for o in objl] == df["class_label"].tolist()
    np.testing.assert_allclose([[o["x"], o["y"], o["z"]] for o in objl], df[["x", "y", "z"]].to_numpy())
    assert read_objects(tmp_path / "objl.xlsx")["tomo"].tolist() == df["tomo"].tolist()
