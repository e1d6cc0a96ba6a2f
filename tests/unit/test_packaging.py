"""The wheel holds edgecache only: the lab, the tests and the benchmarks stay in the checkout.

They start Glance, Keystone and Swift and import psutil; an operator who installs
edgecache must get none of that.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from lab.edgecache import REPO_ROOT


def test_the_wheel_has_no_lab_tests_or_bench(tmp_path: Path) -> None:
    # A copy, so that the build's scratch (build/, *.egg-info) stays out of the checkout.
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".state", "build", "dist", "*.egg-info", "__pycache__", "*_cache",
        "results",
    ))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q",
         "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("edgecache-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.startswith("edgecache/") for name in names)
    top = {name.split("/", 1)[0] for name in names}
    assert not top & {"lab", "tests", "bench"}, sorted(top)
