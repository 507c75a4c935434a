"""The README's Quick start (and command-line chain, when marked) run exactly as written (issue 25)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(marker, lang):
    m = re.search(rf"<!-- {marker} -->\s*```{lang}\n(.*?)```\s*<!-- /{marker} -->", README, re.S)
    return m.group(1) if m else None


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def test_quickstart_runs_twice(tmp_path):
    code = _block("quickstart", "python")
    assert code, "README.md has no <!-- quickstart --> python block"
    for _ in range(2):  # the second run finds the finished store (rerunnable)
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
    assert "f1" in r.stdout and (tmp_path / "particles.star").exists()


def test_chain_runs(tmp_path):
    code = _block("chain", "bash")
    if code is None:
        pytest.skip("README.md has no <!-- chain --> bash block yet")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
