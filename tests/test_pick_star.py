"""Picks carry the tomogram's shape, so the STAR file written from them holds RELION 5's centred Å.

The expected values are computed here from RELION 5's own definition, read with ``starfile`` (the
library RELION's Python tools use), not with our reader: ``rlnCenteredCoordinateXAngst`` is the
distance in Å from the tomogram centre, ``(x - nx / 2) * voxel size`` (likewise y, z).
"""

import numpy as np
import starfile

from tomochunk.cli import main
from tomochunk.io.volume import write_volume
from tomochunk.workflows.picking import pick_inputs

SHAPE = (20, 30, 40)  # z, y, x: all different, so a swapped axis shows
VS = 10.0
# two cubes of 4 voxels: connected-component centres (x, y, z) are their middles
CUBES = {1: (3, 5, 7), 2: (12, 20, 30)}  # label: (z0, y0, x0)


def _store(tmp_path):
    lm = np.zeros(SHAPE, np.uint8)
    for label, (z0, y0, x0) in CUBES.items():
        lm[z0:z0 + 4, y0:y0 + 4, x0:x0 + 4] = label
    p = tmp_path / "tomo.zarr"
    write_volume(lm, p, voxel_size=VS, label=True, levels=1)
    return p


def _expected():
    nz, ny, nx = SHAPE
    return {label: ((x0 + 1.5 - nx / 2) * VS, (y0 + 1.5 - ny / 2) * VS, (z0 + 1.5 - nz / 2) * VS)
            for label, (z0, y0, x0) in CUBES.items()}


def test_pick_inputs_sets_the_shape(tmp_path):
    df = pick_inputs(_store(tmp_path), method="cc")
    assert df.attrs["shape"] == SHAPE and df.attrs["voxel_size"] == VS


def test_cli_pick_star_has_relion5_centred_angstrom(tmp_path):
    store = _store(tmp_path)
    out = tmp_path / "p.star"
    assert main(["pick", str(store), "--method", "cc", "-o", str(out), "--tilt-series-pixel-size", "2.5"]) == 0
    t = starfile.read(out)  # one particles block: RELION reads the first block
    assert {"rlnTomoName", "rlnCenteredCoordinateXAngst", "rlnClassNumber"} <= set(t.columns)
    assert "rlnCoordinateX" not in t.columns
    np.testing.assert_allclose(t["rlnTomoTiltSeriesPixelSize"], 2.5)
    want = _expected()
    for _, row in t.iterrows():
        np.testing.assert_allclose([row["rlnCenteredCoordinateXAngst"], row["rlnCenteredCoordinateYAngst"],
                                    row["rlnCenteredCoordinateZAngst"]], want[int(row["rlnClassNumber"])],
                                   atol=1e-9)
    assert sorted(t["rlnClassNumber"]) == [1, 2] and set(t["rlnTomoName"]) == {"tomo"}


def test_pipeline_star_has_relion5_centred_angstrom(tmp_path):
    from tomochunk.workflows import pipeline

    store = _store(tmp_path)
    df = pipeline._pick(store, {"method": "cc", "formats": ["star"]}, "tomo")
    assert df.attrs["shape"] == SHAPE
    from tomochunk.io.objects import write_objects

    write_objects(df, tmp_path / "q.star")
    t = starfile.read(tmp_path / "q.star")
    want = _expected()
    got = {int(r["rlnClassNumber"]): (r["rlnCenteredCoordinateXAngst"], r["rlnCenteredCoordinateYAngst"],
                                      r["rlnCenteredCoordinateZAngst"]) for _, r in t.iterrows()}
    for label in CUBES:
        np.testing.assert_allclose(got[label], want[label], atol=1e-9)


def test_cli_star_pixel_mode_is_in_tilt_series_pixels(tmp_path):
    """RELION 4: rlnCoordinate* are tilt-series pixels, voxel * voxel size / tilt-series pixel size."""
    store = _store(tmp_path)
    assert main(["pick", str(store), "--method", "cc", "-o", str(tmp_path / "p4.star"), "--star-coordinates",
                 "pixel", "--tilt-series-pixel-size", "2.5"]) == 0
    t = starfile.read(tmp_path / "p4.star")
    for _, row in t.iterrows():
        z0, y0, x0 = CUBES[int(row["rlnClassNumber"])]
        np.testing.assert_allclose([row["rlnCoordinateX"], row["rlnCoordinateY"], row["rlnCoordinateZ"]],
                                   np.array([x0, y0, z0], float) * 4 + 1.5 * 4, atol=1e-9)  # 10 Å / 2.5 Å
    # objects convert takes the same options
    assert main(["objects", "convert", str(tmp_path / "p4.star"), "-o", str(tmp_path / "c.star"),
                 "--tilt-series-pixel-size", "5"]) == 0
    c = starfile.read(tmp_path / "c.star")
    np.testing.assert_allclose(c["rlnTomoTiltSeriesPixelSize"], 5.0)
    np.testing.assert_allclose(c["rlnCenteredCoordinateXAngst"].sort_values(),
                               sorted(v[0] for v in _expected().values()), atol=1e-9)
