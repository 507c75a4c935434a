"""benchmarks/device/gpu_check.py starts and writes its JSON (its --cpu fallback, on a tiny volume)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device" / "gpu_check.py"


@pytest.mark.timeout(300)
def test_gpu_check_cpu_fallback_writes_every_figure(tmp_path):
    out = tmp_path / "cpu.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KERAS_BACKEND", None)
    # TensorFlow is the backend here, so the reference is computed in this same process
    res = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--backend", "tensorflow", "--size", "16",
                          "--classes", "3", "--out", str(out), "--data", str(tmp_path / "data")],
                         capture_output=True, text=True, timeout=280, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["backend"] == "tensorflow" and r["cpu_mode"] and r["voxels"] == 16 ** 3
    assert [(x["tiling"], x["precision"]) for x in r["runs"]] == [
        ("blocks", "float32"), ("blocks", "bfloat16"), ("patches", "bfloat16"), ("patches", "float32")]
    assert all(x["voxels_per_s"] > 0 for x in r["runs"]), r["runs"]
    crop = r["crop"]
    assert crop["float32"]["max_abs_delta"] == 0.0  # the same backend as its reference
    assert crop["bfloat16"]["max_abs_delta"] < 0.1 and crop["tensorflow_host_voxels_per_s"] > 0
    assert set(r["blocks"]["mean_after_first"]) == {"read_s", "network_s", "write_s"}
    assert "gpu_memory" in r and r["elapsed_s"] > 0
