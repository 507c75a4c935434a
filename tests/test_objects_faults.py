"""Object lists under faults and hostile input: killed writes, truncated files, nonsense values, names from data."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from tomochunk import FormatError, MissingError, ValueProblem, read_objects, write_objects
from tomochunk.io.objects import validate_objects, write_copick, write_per_tomogram

WRITER = r"""
import sys
import numpy as np, pandas as pd
from tomochunk import write_objects
n = int(sys.argv[2])
rng = np.random.default_rng(0)
df = pd.DataFrame({"tomo": 0, "class_label": rng.integers(1, 4, n), "x": rng.uniform(0, 500, n),
                   "y": rng.uniform(0, 500, n), "z": rng.uniform(0, 200, n), "score": rng.uniform(0, 1, n)})
write_objects(df, sys.argv[1])
"""


def _tmp_files(folder, name):
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}.") and ".tmp" in p.name]


def test_sigkill_during_large_csv_write_leaves_no_truncated_list(tmp_path):
    out = tmp_path / "picks.csv"
    n = 600_000
    env = dict(os.environ)
    subprocess.run([sys.executable, "-c", WRITER, str(out), "10"], check=True, env=env, timeout=120)
    assert len(read_objects(out)) == 10  # a complete earlier list
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(n)], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            tmp = _tmp_files(tmp_path, out.name)
            if tmp and tmp[0].stat().st_size > 256 * 1024:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the writer finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    partial = _tmp_files(tmp_path, out.name)
    assert partial and partial[0].stat().st_size > 0  # the kill did land mid-write
    # the list under its name is still the earlier, complete one
    assert len(read_objects(out)) == 10
    # a list cut short the way an in-place write would leave it is refused, naming the file
    cut = tmp_path / "cut.csv"
    lines = partial[0].read_bytes().split(b"\n")
    cut.write_bytes(b"\n".join(lines[:1000]) + b"\n" + lines[1000][:5])
    with pytest.raises(FormatError, match="truncated") as e:
        read_objects(cut)
    assert str(cut) in str(e.value)
    # the rerun gives the whole list, and clears what the killed write left
    subprocess.run([sys.executable, "-c", WRITER, str(out), str(n)], check=True, env=env, timeout=300)
    df = read_objects(out)
    assert len(df) == n
    assert _tmp_files(tmp_path, out.name) == []


@pytest.mark.parametrize("name, text", [
    ("a.csv", "tomo_idx,class_label,x,y,z\n0,1,1,2,3\n0,1,4,5"),
    ("b.tsv", "1\t2\t3\n4\t5"),
    ("c.txt", "1 2 3 0.5\n4 5"),
    ("d.star", "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n1 2 3\n4 5"),
    ("e.xml", '<objlist>\n  <object class_label="1" x="1" y="2" z="3"/>\n  <object class_label="1" x='),
    ("f.json", '{"pickable_object_name": "a", "voxel_spacing": 10, "points": [{"location": {"x": 1'),
    ("g.tbl", "1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 1 0 10 20 30\n2 1 1 0 0"),
])
def test_truncated_lists_are_refused(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(FormatError, match="truncated") as e:
        read_objects(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_duplicated_csv_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("tomo_idx,class_label,x,y,z,x\n0,1,1,2,3,9\n")
    with pytest.raises(FormatError, match="duplicated column.*x") as e:
        read_objects(p)
    assert e.value.line == 1


@pytest.mark.parametrize("col, value", [("x", np.inf), ("z", -np.inf), ("y", np.nan), ("phi", np.inf)])
def test_non_finite_coordinates_refused_and_never_written(tmp_path, col, value):
    df = pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, 2.0], "z": [1.0, 2.0], "phi": 0.0, "psi": 0.0, "the": 0.0})
    df.loc[1, col] = value
    with pytest.raises(ValueProblem, match=col) as e:
        validate_objects(df)
    assert "\n" not in str(e.value)
    for ext in ("tsv", "csv", "xml"):
        with pytest.raises(ValueProblem):
            write_objects(df, tmp_path / f"o.{ext}")
        assert not (tmp_path / f"o.{ext}").exists()



def test_non_finite_coordinates_in_a_file(tmp_path):
    p = tmp_path / "inf.csv"
    p.write_text("x,y,z\n1,2,3\ninf,2,3\n")
    with pytest.raises(FormatError, match="'x' has an infinite value") as e:
        read_objects(p)
    assert str(p) in str(e.value)


def test_names_from_data_stay_inside_the_output_folder(tmp_path):
    root = tmp_path / "proj"
    df = validate_objects(pd.DataFrame({"tomo": ["../../evil", "/etc/run"], "class_label": [1, 2],
                                        "x": [1.0, 2], "y": [1.0, 2], "z": [1.0, 2]}), voxel_size=10,
                          classes={1: "../../../escaped", 2: "a/b_c"})
    paths = write_copick(df, root, "me_x", "1")
    for p in paths:
        assert root.resolve() in p.resolve().parents
        assert p.parent.name == "Picks" and p.parent.parent.parent.name == "ExperimentRuns"
        user, session, obj = p.stem.split("_")  # copick splits the file name on "_"
        assert user == "me-x" and session == "1"
    assert sorted(p.parent.parent.name for p in paths) == ["etc_run", "evil"]
    assert json.loads(paths[0].read_text())["run_name"] == "../../evil"  # the data keeps its name
    out = write_per_tomogram(df, tmp_path / "split", format="tsv")
    assert sorted(p.name for p in out.values()) == ["etc_run.tsv", "evil.tsv"]
    assert all((tmp_path / "split").resolve() in p.resolve().parents for p in out.values())
    clash = df.assign(tomo=["a/b", "a_b"])
    with pytest.raises(ValueProblem, match="both give"):
        write_per_tomogram(clash, tmp_path / "split2", format="tsv")


def test_copick_bad_voxel_spacing(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"pickable_object_name": "a", "voxel_spacing": 0, "unit": "angstrom",
                             "points": [{"location": {"x": 1, "y": 2, "z": 3}}]}) + "\n")
    with pytest.raises(FormatError, match="voxel_spacing") as e:
        read_objects(p)
    assert str(p) in str(e.value)
