"""The package as a user installs it: a wheel built from the checkout's files, unpacked away from the
repository and run from another folder.

What the package reads at run time (the full-size model configurations, the masks released with the
paper) must be inside the wheel; nothing may come from the repository or ``../shared``. The wheel is
built with ``--no-build-isolation`` (the dev extra pins a setuptools that can build it), so no
download happens.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RUN_OUTSIDE = """
import ahamask_lightning
from ahamask_lightning.cli.main import main
from ahamask_lightning.released_masks import released_mask, released_names

print("PACKAGE", ahamask_lightning.__file__)
print("RELEASED", len(released_names()))
main(["model", "heads", "--model", "salmonn-13b"])
main(["model", "heads", "--model", "qwen2-audio-7b"])
main(["mask", "info", str(released_mask("asr_librispeech"))])
"""


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"  # a copy: the build writes build/ and *.egg-info next to pyproject.toml
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("src", "data_modules"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(dist)], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("ahamask_lightning-*.whl")
    return wheel


def test_the_wheel_runs_outside_the_repository(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.split("/")[0] in ("tests", "bench", "experiments", "checkpoints", "shared")]
    assert sum(n.startswith("ahamask_lightning/released_masks/salmonn-13b/") and n.endswith(".safetensors")
               for n in names) == 10
    assert any(n.startswith("ahamask_lightning/models/configs/") and n.endswith(".json") for n in names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip puts in site-packages (scripts aside)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN_OUTSIDE)], check=False, cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"PACKAGE {site}" in out  # the unpacked wheel, not the checkout's editable install
    assert "RELEASED 10" in out
    assert "40 layers x 40 query heads = 1600 gated heads" in out
    assert "32 layers x 32 query heads = 1024 gated heads" in out
    assert "1525 of 1600 heads active" in out
    assert str(REPO) not in out
