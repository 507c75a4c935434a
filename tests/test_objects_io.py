"""Object-list readers and writers: round trips on real files, bad input."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from tomochunk import FormatError, MissingError, ValueProblem, read_objects, write_objects
from tomochunk.io.objects import (COLUMNS, empty_objects, euler_to_matrix, matrix_to_euler,
                                  relion_to_tom, tom_to_relion, validate_objects)


def _objects(n=9, *, tomo="t1", seed=0, classes=3, angles=True, voxel_size=10.5):
    rng = np.random.default_rng(seed)
    d = {"tomo": [tomo] * n, "class_label": rng.integers(1, classes + 1, n),
         "x": rng.uniform(0, 200, n), "y": rng.uniform(0, 200, n), "z": rng.uniform(0, 80, n)}
    if angles:
        d.update(phi=rng.uniform(-179, 179, n), psi=rng.uniform(-179, 179, n), the=rng.uniform(1, 179, n))
    d.update(score=rng.uniform(0, 1, n), size=rng.integers(1, 500, n), obj_id=np.arange(n) + 1)
    return validate_objects(pd.DataFrame(d), voxel_size=voxel_size,
                            classes={i: f"protein{i}" for i in range(1, classes + 1)})


# ----------------------------------------------------------------------------- schema
def test_validate_orders_and_types():
    df = pd.DataFrame({"obj_id": [1, 2], "z": [1, 2], "x": [3, 4], "y": [5, 6], "foo": ["a", "b"],
                       "tomo": [1, 2], "score": [1, 2]})
    out = validate_objects(df, voxel_size=4)
    assert list(out.columns) == ["tomo", "class_label", "x", "y", "z", "score", "obj_id", "foo"]
    assert out["class_label"].tolist() == [1, 1]
    assert out["x"].dtype == np.float64 and out["score"].dtype == np.float64
    assert out["obj_id"].dtype == np.int64 and out["tomo"].dtype == np.int64
    assert out.attrs["voxel_size"] == 4.0
    # nullable ints where some are missing
    out = validate_objects(pd.DataFrame({"x": [1.0, 2], "y": [1, 2], "z": [1, 2], "size": [3, None]}))
    assert str(out["size"].dtype) == "Int64"


@pytest.mark.parametrize("df, msg", [
    (pd.DataFrame({"x": [1], "y": [2]}), "no column z"),
    (pd.DataFrame({"x": [1], "y": [2], "z": [3], "phi": [1]}), "not all of phi"),
    (pd.DataFrame({"x": [1], "y": [2], "z": [3], "class_label": [0]}), ">= 1"),
    (pd.DataFrame({"x": ["a"], "y": [2], "z": [3]}), "not numeric"),
])
def test_validate_rejects(df, msg):
    with pytest.raises(ValueProblem, match=msg):
        validate_objects(df)


def test_empty_objects():
    e = empty_objects(7.0)
    assert len(e) == 0 and e.attrs["voxel_size"] == 7.0
    assert list(validate_objects(e).columns) == ["class_label", "x", "y", "z"]


def test_columns_constant():
    assert COLUMNS == ("tomo", "class_label", "x", "y", "z", "phi", "psi", "the", "score", "size", "obj_id")


# ----------------------------------------------------------------------------- rotation
def test_euler_conventions_invert():
    rng = np.random.default_rng(1)
    phi, psi, the = rng.uniform(-179, 179, 20), rng.uniform(-179, 179, 20), rng.uniform(1, 179, 20)
    p2, s2, t2 = matrix_to_euler(euler_to_matrix(phi, psi, the))
    np.testing.assert_allclose([p2, s2, t2], [phi, psi, the], atol=1e-9)
    p3, s3, t3 = relion_to_tom(*tom_to_relion(phi, psi, the))
    np.testing.assert_allclose([p3, s3, t3], [phi, psi, the], atol=1e-9)
    # Dynamo's matrix formula for (tdrot, tilt, narot) = (30, 60, 75), as published with eulerangles, is
    # the same product of axis rotations as ours; its meaning is the inverse (tests/test_geometry.py).
    np.testing.assert_allclose(euler_to_matrix(30, 75, 60), [[-0.0173, -0.5477, 0.8365], [0.9012, -0.3709, -0.2241],
                                                             [0.4330, 0.7500, 0.5000]], atol=1e-4)
    # phi is applied first: a pure phi rotation turns x towards y about z
    np.testing.assert_allclose(euler_to_matrix(90, 0, 0) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("ext", ["xml", "csv", "xlsx"])
def test_roundtrip_deepfinder_formats(tmp_path, ext):
    df = _objects()
    p = tmp_path / f"objl.{ext}"
    write_objects(df, p)
    back = read_objects(p, voxel_size=df.attrs["voxel_size"])
    # Excel keeps 15-16 significant digits, the others are exact.
    pd.testing.assert_frame_equal(back, df, check_exact=ext != "xlsx", rtol=1e-14)
    assert back.attrs["voxel_size"] == 10.5


def test_xml_carries_voxel_size_and_optional_fields(tmp_path):
    df = _objects(angles=False)
    df = df.drop(columns=["score", "size", "obj_id", "tomo"])
    write_objects(df, tmp_path / "a.xml")
    text = (tmp_path / "a.xml").read_text()
    assert "psi" not in text and "cluster_size" not in text and 'voxel_size="10.5"' in text
    back = read_objects(tmp_path / "a.xml")
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert back.attrs["voxel_size"] == 10.5


def test_xml_int_tomo_and_partial_attributes(tmp_path):
    p = tmp_path / "df.xml"
    p.write_text('<objlist>\n  <object tomo_idx="0" obj_id="3" class_label="1" x="1.500" y="2.000" z="3.000"'
                 ' psi="10.000" phi="20.000" the="30.000" cluster_size="12"/>\n'
                 '  <object tomo_idx="1" class_label="2" x="4.000" y="5.000" z="6.000"/>\n</objlist>\n')
    df = read_objects(p)
    assert df["tomo"].tolist() == [0, 1] and df["tomo"].dtype == np.int64
    assert df.loc[0, ["phi", "psi", "the"]].tolist() == [20.0, 10.0, 30.0]
    assert np.isnan(df.loc[1, "phi"]) and str(df["size"].dtype) == "Int64"
    write_objects(df, tmp_path / "again.xml")
    pd.testing.assert_frame_equal(read_objects(tmp_path / "again.xml"), df)


def test_csv_with_and_without_bom(tmp_path):
    body = "tomo_idx,class_label,x,y,z\n0,1,1.5,2,3\n0,2,4,5,6.25\n"
    for name, data in [("plain.csv", body.encode()), ("bom.csv", b"\xef\xbb\xbf" + body.encode())]:
        (tmp_path / name).write_bytes(data)
        df = read_objects(tmp_path / name)
        assert list(df.columns) == ["tomo", "class_label", "x", "y", "z"]
        assert df["z"].tolist() == [3.0, 6.25]


def test_csv_without_tomo_roundtrip(tmp_path):
    df = _objects().drop(columns="tomo")
    write_objects(df, tmp_path / "a.csv")
    assert (tmp_path / "a.csv").read_text().startswith("tomo_idx,class_label,x,y,z")
    pd.testing.assert_frame_equal(read_objects(tmp_path / "a.csv"), df, check_exact=True)


@pytest.mark.parametrize("angles", [True, False])
def test_roundtrip_star_pixel(tmp_path, angles):
    import starfile

    df = _objects(angles=angles)
    write_objects(df, tmp_path / "p.star", coordinates="pixel")
    t = starfile.read(tmp_path / "p.star", always_dict=True)
    assert list(t) == ["particles"]  # one block: RELION reads the first one
    assert t["particles"]["rlnTomoTiltSeriesPixelSize"].tolist() == [10.5] * len(df)
    back = read_objects(tmp_path / "p.star")
    pd.testing.assert_frame_equal(back, df, rtol=1e-12)
    np.testing.assert_array_equal(back[["x", "y", "z"]], df[["x", "y", "z"]])  # coordinates exact
    assert back.attrs["voxel_size"] == 10.5


def test_star_relion4_tilt_series_pixels(tmp_path):
    import starfile

    df = _objects()
    write_objects(df, tmp_path / "p.star", coordinates="relion4", tilt_series_pixel_size=2.625)
    t = starfile.read(tmp_path / "p.star")
    np.testing.assert_allclose(t["rlnCoordinateX"], df["x"] * 4)  # 10.5 Å voxels = 4 tilt-series pixels
    assert set(t["rlnTomoTiltSeriesPixelSize"]) == {2.625}
    pd.testing.assert_frame_equal(read_objects(tmp_path / "p.star"), df, rtol=1e-12)
    # a RELION 4 file of another tool: pixels of rlnTomoTiltSeriesPixelSize, to voxels of the size asked
    starfile.write({"particles": pd.DataFrame({"rlnTomoName": ["TS_1"], "rlnCoordinateX": [400.0],
                                               "rlnCoordinateY": [200.0], "rlnCoordinateZ": [100.0],
                                               "rlnTomoTiltSeriesPixelSize": [2.5]})}, tmp_path / "r4.star")
    back = read_objects(tmp_path / "r4.star", voxel_size=10.0)
    assert back[["x", "y", "z"]].values.tolist() == [[100.0, 50.0, 25.0]]
    assert read_objects(tmp_path / "r4.star").attrs["voxel_size"] == 2.5


def test_roundtrip_star_centred(tmp_path):
    import starfile

    df = _objects()
    shape = (80, 200, 210)
    write_objects(df, tmp_path / "c.star", shape=shape, tilt_series_pixel_size=2.625)  # RELION 5 is the default
    blocks = starfile.read(tmp_path / "c.star", always_dict=True)
    assert list(blocks) == ["particles"]
    t = blocks["particles"]
    assert {"rlnTomoName", "rlnCenteredCoordinateXAngst", "rlnAngleRot", "rlnClassNumber",
            "rlnAutopickFigureOfMerit", "rlnTomoTiltSeriesPixelSize"} <= set(t.columns)
    assert "rlnCoordinateX" not in t.columns and set(t["rlnTomoTiltSeriesPixelSize"]) == {2.625}
    np.testing.assert_allclose(t["rlnCenteredCoordinateXAngst"], (df["x"] - 105) * 10.5)
    np.testing.assert_allclose(t["rlnCenteredCoordinateZAngst"], (df["z"] - 40) * 10.5)
    back = read_objects(tmp_path / "c.star")  # shape and voxel size from our comment line
    pd.testing.assert_frame_equal(back, df, rtol=1e-12)
    assert back.attrs["shape"] == shape
    # the shape can come from the list itself; a foreign centred file needs it passed
    df2 = df.copy()
    df2.attrs["shape"] = shape
    write_objects(df2, tmp_path / "d.star")
    foreign = tmp_path / "f.star"
    foreign.write_text("\n".join(l for l in (tmp_path / "d.star").read_text().splitlines()
                                 if not l.startswith("# tomochunk")) + "\n")
    with pytest.raises(FormatError, match="shape"):
        read_objects(foreign)
    pd.testing.assert_frame_equal(read_objects(foreign, shape=shape, voxel_size=10.5), df, rtol=1e-12)
    with pytest.raises(ValueProblem, match="shape"):
        write_objects(df, tmp_path / "e.star", coordinates="centered")


def test_star_reads_relion_tomo_names_and_angles(tmp_path):
    import starfile

    t = pd.DataFrame({"rlnTomoName": ["TS_01", "TS_02"], "rlnCoordinateX": [10.0, 20.0],
                      "rlnCoordinateY": [1.0, 2.0], "rlnCoordinateZ": [5.0, 6.0],
                      "rlnAngleRot": [80.0, 0.0], "rlnAngleTilt": [30.0, 0.0], "rlnAnglePsi": [-110.0, 0.0],
                      "rlnAutopickFigureOfMerit": [0.5, 0.7], "rlnClassNumber": [1, 2],
                      "rlnMicrographName": ["a", "b"]})
    starfile.write({"particles": t}, tmp_path / "r.star")
    with pytest.warns(UserWarning, match="rlnMicrographName"):
        df = read_objects(tmp_path / "r.star")
    assert df["tomo"].tolist() == ["TS_01", "TS_02"]
    np.testing.assert_allclose(df.loc[0, ["phi", "psi", "the"]].astype(float), [10, 20, 30])
    assert df["score"].tolist() == [0.5, 0.7] and df["rlnMicrographName"].tolist() == ["a", "b"]


def test_roundtrip_copick(tmp_path):
    df = _objects(classes=1)
    p = tmp_path / "picks.json"
    with pytest.warns(UserWarning, match="size"):
        write_objects(df, p, user_id="alice", session_id="7")
    d = json.loads(p.read_text())
    assert d["unit"] == "angstrom" and d["voxel_spacing"] == 10.5 and d["run_name"] == "t1"
    assert d["pickable_object_name"] == "protein1" and d["user_id"] == "alice"
    assert abs(d["points"][0]["location"]["x"] - df["x"][0] * 10.5) < 1e-9
    assert np.array(d["points"][0]["transformation_"]).shape == (4, 4)
    back = read_objects(p)
    pd.testing.assert_frame_equal(back, df.drop(columns="size"), rtol=1e-12)
    assert back.attrs["classes"] == {1: "protein1"} and back.attrs["voxel_size"] == 10.5
    # class label from a name map
    back = read_objects(p, classes={4: "protein1"})
    assert back["class_label"].unique().tolist() == [4]


def test_copick_refuses_several_classes(tmp_path):
    with pytest.raises(ValueProblem, match="one class"):
        write_objects(_objects(classes=3), tmp_path / "p.json")


def test_roundtrip_cet_pick_and_ais(tmp_path):
    df = _objects(classes=1, angles=False)[["class_label", "x", "y", "z", "score"]]
    write_objects(df, tmp_path / "t.txt")
    pd.testing.assert_frame_equal(read_objects(tmp_path / "t.txt"), df, check_exact=True)
    ints = df[["class_label", "x", "y", "z"]].copy()
    ints[["x", "y", "z"]] = np.rint(ints[["x", "y", "z"]])
    write_objects(ints, tmp_path / "a.tsv")
    assert (tmp_path / "a.tsv").read_text().splitlines()[0].count("\t") == 2
    pd.testing.assert_frame_equal(read_objects(tmp_path / "a.tsv"), ints, check_exact=True)
    # a tomogram name can be recorded on read; the files themselves hold one tomogram
    assert read_objects(tmp_path / "a.tsv", tomo="TS_1")["tomo"].unique().tolist() == ["TS_1"]
    with pytest.raises(ValueProblem, match="one tomogram"):
        write_objects(merge_two_tomos(), tmp_path / "b.tsv")


def merge_two_tomos():
    return pd.concat([_objects(tomo="a"), _objects(tomo="b")], ignore_index=True)


def test_format_override_and_empty_lists(tmp_path):
    df = _objects()
    write_objects(df, tmp_path / "objl.dat", format="deepfinder")
    pd.testing.assert_frame_equal(read_objects(tmp_path / "objl.dat", format="xml"), df)
    for ext in ["xml", "csv", "star", "txt", "tsv", "xlsx"]:
        p = tmp_path / f"empty.{ext}"
        write_objects(empty_objects(5.0), p, **({"shape": (8, 8, 8)} if ext == "star" else {}))
        back = read_objects(p)
        assert len(back) == 0 and {"x", "y", "z", "class_label"} <= set(back.columns), ext
    with pytest.raises(ValueProblem, match="extension"):
        read_objects(tmp_path / "objl.dat")


def test_unknown_columns_kept_with_warning(tmp_path):
    df = _objects()
    df["mycol"] = np.arange(len(df)) * 2.5
    for ext in ["xml", "csv", "star", "xlsx"]:
        write_objects(df, tmp_path / f"u.{ext}")
        with pytest.warns(UserWarning, match="mycol"):
            back = read_objects(tmp_path / f"u.{ext}")
        np.testing.assert_allclose(back["mycol"], df["mycol"])
        assert list(back.columns)[-1] == "mycol"


# ----------------------------------------------------------------------------- errors
def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name, text, msg, line", [
    ("a.xml", '<objlist>\n<object class_label="1" x="1" y="2" z="3">\n</objlist>\n', "malformed XML", 3),
    ("b.xml", '<objlist>\n<object class_label="1" x="1" y="2" z="3"/>\n<object class_label="1" x="1" y="2"/>\n'
              '</objlist>\n', "lacks required attribute.*z", 3),
    ("c.xml", '<objlist>\n\n<object class_label="1" x="1" y="2" z="3" phi="1" psi="2"/>\n</objlist>\n',
     "not all of phi, psi, the", 3),
    ("d.xml", '<objlist>\n<object class_label="1" x="abc" y="2" z="3"/>\n</objlist>\n', "not a number", 2),
    ("e.csv", "tomo_idx,class_label,x,y,z\n0,1,1,2,3\n0,1,1,zz,3\n", "y='zz' is not a number", 3),
    ("f.csv", "tomo_idx,class_label,x,y,z,phi,psi,the\n0,1,1,2,3,1,2,3\n0,1,1,2,3,,,4\n", "only some", 3),
    ("g.csv", "tomo_idx,class_label,x,y\n0,1,1,2\n", "lacks column.*z", 1),
    ("h.csv", "tomo_idx,class_label,x,y,z\n0,1,1,2\n", "4 fields", 2),
    ("i.tsv", "1\t2\t3\n4\t5\n", "2 fields", 2),
    ("j.tsv", "1\t2\t3\n4\tq\t5\n", "y='q'", 2),
    ("k.txt", "1 2 3 0.5\n# c\n1 2 x 0.1\n", "z='x'", 3),
    ("l.json", '{"points": [\n{"location": {"x": 1}\n]}', "malformed JSON", 3),
    ("m.xml", "", "empty", None),
    ("n.xml", '<other>\n</other>\n', "expected <objlist>", 1),
])
def test_bad_text_input_names_file_and_line(tmp_path, name, text, msg, line):
    p = _write(tmp_path, name, text)
    with pytest.raises(FormatError, match=msg) as e:
        read_objects(p)
    assert str(p) in str(e.value)
    assert e.value.line == line
    if line is not None:
        assert f"{p}:{line}:" in str(e.value)


def test_star_without_coordinates(tmp_path):
    import starfile

    starfile.write({"particles": pd.DataFrame({"rlnTomoName": ["a"], "rlnAngleRot": [1.0]})}, tmp_path / "s.star")
    with pytest.raises(FormatError, match="no .*coordinate"):
        read_objects(tmp_path / "s.star")
    starfile.write({"particles": pd.DataFrame({"rlnCoordinateX": [1.0, 2.0], "rlnCoordinateY": [1.0, 2.0],
                                               "rlnCoordinateZ": ["3", "oops"]})}, tmp_path / "t.star")
    with pytest.raises(FormatError, match="rlnCoordinateZ='oops' is not a number") as e:
        read_objects(tmp_path / "t.star")
    lines = (tmp_path / "t.star").read_text().splitlines()
    assert "oops" in lines[e.value.line - 1]
    starfile.write({"particles": pd.DataFrame({"rlnCoordinateX": [1.0], "rlnCoordinateY": [1.0],
                                               "rlnCoordinateZ": [1.0], "rlnAngleRot": [3.0]})}, tmp_path / "u.star")
    with pytest.raises(FormatError, match="not all of rlnAngleRot") as e:
        read_objects(tmp_path / "u.star")
    assert (tmp_path / "u.star").read_text().splitlines()[e.value.line - 1] == "data_particles"


def test_missing_file_and_bad_xlsx(tmp_path):
    with pytest.raises(MissingError, match="no such file"):
        read_objects(tmp_path / "nope.xml")
    with pytest.raises(MissingError):
        write_objects(_objects(), tmp_path / "no" / "dir.xml")
    _write(tmp_path, "x.xlsx", "not a zip")
    with pytest.raises(FormatError, match="xlsx"):
        read_objects(tmp_path / "x.xlsx")


def test_csv_with_pandas_index_column(tmp_path):
    df = _objects().drop(columns="tomo")
    out = df.rename(columns={"size": "cluster_size"})
    out.insert(0, "tomo_idx", 3)
    out.to_csv(tmp_path / "pd.csv")  # pandas adds an unnamed index column
    back = read_objects(tmp_path / "pd.csv")
    assert list(back.columns) == ["tomo"] + list(df.columns)
    np.testing.assert_array_equal(back["x"], df["x"])


def test_xml_refuses_bad_attribute_names(tmp_path):
    df = _objects()
    df["bad name"] = 1
    with pytest.raises(ValueProblem, match="XML attributes"):
        write_objects(df, tmp_path / "a.xml")


def test_star_pytom_style_and_foreign_optics(tmp_path):
    import starfile

    t = pd.DataFrame({"rlnCoordinateX": [10.0], "rlnCoordinateY": [1.0], "rlnCoordinateZ": [5.0],
                      "rlnAngleRot": [0.0], "rlnAngleTilt": [0.0], "rlnAnglePsi": [0.0],
                      "rlnLCCmax": [0.31], "rlnOpticsGroup": [1]})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.7], "rlnTomoTiltSeriesPixelSize": [1.35]})
    starfile.write({"optics": optics, "particles": t}, tmp_path / "p.star")
    with pytest.warns(UserWarning, match="rlnOpticsGroup"):
        df = read_objects(tmp_path / "p.star")
    assert df["score"].tolist() == [0.31]
    # RELION's image pixel size is the subtomogram's; RELION 4 coordinates are tilt-series pixels
    assert df.attrs["voxel_size"] == 1.35 and df["x"].tolist() == [10.0]
    np.testing.assert_allclose(euler_to_matrix(df["phi"], df["psi"], df["the"]), np.eye(3)[None], atol=1e-12)
    with pytest.warns(UserWarning, match="rlnOpticsGroup"):
        back = read_objects(tmp_path / "p.star", voxel_size=13.5)
    assert back.attrs["voxel_size"] == 13.5
    np.testing.assert_allclose(back["x"], [1.0])


def test_csv_without_class_label_is_class_1(tmp_path):
    p = _write(tmp_path, "xyz.csv", "x,y,z\n1,2,3\n")
    df = read_objects(p)
    assert df["class_label"].tolist() == [1] and list(df.columns) == ["class_label", "x", "y", "z"]
