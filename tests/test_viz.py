import dask.array as da
import numpy as np
import pandas as pd

from tomochunk.viz import orthoslices


def test_orthoslices_png(tmp_path, rng):
    vol = da.from_array(rng.normal(size=(20, 30, 40)).astype(np.float32), chunks=8)
    lab = np.zeros((20, 30, 40), np.uint8)
    lab[8:12, 10:20, 15:25] = 2
    picks = pd.DataFrame({"class_label": [2, 1], "x": [20.0, 3.0], "y": [15.0, 4.0], "z": [10.0, 1.0]})
    out = orthoslices(vol, tmp_path / "o.png", labels=lab, objects=picks, title="t")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
