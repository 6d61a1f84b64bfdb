"""Shared fixtures: a small SynthSpeech corpus made once per session (espeak-ng + sox)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed to synthesise speech")
    from data_modules.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n=60, seed=0, voices=["m3", "f2", "m4", "f1", "m5", "f3"], n_scenes=8)
    return out


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repository root, where the experiment YAMLs use relative paths."""
    monkeypatch.chdir(REPO)
    return REPO
