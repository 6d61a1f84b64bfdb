"""Fixtures of the reliability suite: generated WAV corpora, a tiny-model fit config, and helpers
that run ``ahamask fit`` as a real subprocess (``python -m ahamask_lightning.cli.main``).

Each test names the fault it tries and what must be kept with ``@pytest.mark.fault(name, kept)``;
the terminal summary lists them with their outcome.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
_FAULTS: list[tuple[str, str, str]] = []


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "fault(name, kept): a fault the reliability suite injects and what survives it")


def pytest_runtest_logreport(report) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        fault = dict(report.user_properties).get("fault")
        if fault:
            param = f" [{report.nodeid.rsplit('[', 1)[1]}" if report.nodeid.endswith("]") else ""
            _FAULTS.append((fault[0] + param, fault[1], report.outcome))


@pytest.fixture(autouse=True)
def _record_fault(request):
    marker = request.node.get_closest_marker("fault")
    if marker is not None:
        request.node.user_properties.append(("fault", (marker.args[0], marker.kwargs.get("kept", ""))))


def pytest_terminal_summary(terminalreporter) -> None:
    if not _FAULTS:
        return
    terminalreporter.section(f"reliability: {len(_FAULTS)} faults tried")
    for name, kept, outcome in _FAULTS:
        terminalreporter.write_line(f"[{outcome}] {name} -> kept: {kept}")


# --- data -------------------------------------------------------------------------------------
def write_wavs(root: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` short tone-plus-noise WAVs (1.0 to 1.5 s, 16 kHz) and their manifest rows."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        seconds = 1.0 + 0.25 * (i % 3)
        t = np.arange(int(16000 * seconds)) / 16000
        f0 = 110 if i % 2 == 0 else 210
        x = 0.3 * np.sin(2 * np.pi * (f0 + 5 * rng.standard_normal()) * t) + 0.02 * rng.standard_normal(t.size)
        name = f"g{i:03d}.wav"
        sf.write(audio / name, x.astype("float32"), 16000)
        rows.append({"id": f"g{i:03d}", "audio": f"audio/{name}", "task": "gr",
                     "text": "Male" if i % 2 == 0 else "Female"})
    return rows


@pytest.fixture(scope="session")
def good_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    rows = write_wavs(root, 24)
    man = root / "train.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return man


# --- config and runs ----------------------------------------------------------------------------
CONFIG = """\
seed_everything: 0
trainer:
  default_root_dir: {root}
  max_steps: {max_steps}
  precision: 32-true
  accelerator: cpu
  devices: 1
  log_every_n_steps: 1
  limit_val_batches: 0
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: ahamask_lightning.callbacks.TemperatureAnnealing
      init_args: {{start: 4.0, end: 0.5, steps: 12}}
    - class_path: ahamask_lightning.callbacks.SparsityPenalty
      init_args: {{lam: 0.02, warmup_steps: 8}}
    - class_path: ahamask_lightning.callbacks.MaskMonitor
      init_args: {{every_n_steps: 0, image_every_n_steps: 0}}
    - class_path: ahamask_faults.FaultInjector
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{every_n_train_steps: {every}, save_last: true}}
model:
  class_path: ahamask_lightning.module.AHAMaskModule
  init_args:
    model:
      class_path: ahamask_lightning.models.Qwen2AudioAdapter
      init_args: {{variant: instruct, tiny: true}}
    prompt: none
    lr: 0.5
    warmup_lr: 0.05
    warmup_steps: 3
    final_lr: 0.01
    max_nonfinite_in_a_row: {max_nonfinite}
data:
  class_path: ahamask_lightning.data.ManifestDataModule
  init_args:
    train: [{manifest}]
    batch_size: 2
    shuffle_buffer: 8
    max_seconds: 2.0
    num_workers: 0
"""


def write_config(path: Path, root: Path, manifest: Path, every: int = 5, max_steps: int = 16,
                 max_nonfinite: int = 10) -> Path:
    path.write_text(CONFIG.format(root=root, manifest=manifest, every=every, max_steps=max_steps,
                                  max_nonfinite=max_nonfinite))
    return path


def fit_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ahamask_lightning.cli.main", "fit", "--config", str(config), *args]


def fault_env(fault_dir: Path, **faults: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), str(REPO)]),
               AHAMASK_FAULT_DIR=str(fault_dir), PYTHONUNBUFFERED="1")
    for key in ("AHAMASK_FAULT_PAUSE_AT", "AHAMASK_FAULT_NAN_AT", "AHAMASK_FAULT_FILL_DISK_AT",
                "AHAMASK_FAULT_FILL_DISK_PATH"):
        env.pop(key, None)
    env.update({f"AHAMASK_FAULT_{k.upper()}": v for k, v in faults.items()})
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Run:
    """One ``ahamask fit`` subprocess; stdout/stderr go to files in its fault dir."""

    def __init__(self, cmd: list[str], fault_dir: Path, **faults: str) -> None:
        fault_dir.mkdir(parents=True, exist_ok=True)
        self.dir = fault_dir
        self.out = open(fault_dir / "stdout.txt", "w")  # noqa: SIM115 - closed in wait()
        self.err = open(fault_dir / "stderr.txt", "w")  # noqa: SIM115
        # SIGINT back to its default in the child: a suite started in the background (`cmd &`) inherits
        # SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so Ctrl-C tests would hang
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=fault_env(fault_dir, **faults), stdout=self.out,
                                     stderr=self.err, preexec_fn=_default_sigint)  # noqa: PLW1509 - spawned from one thread

    def wait_for_pause(self, step: int, timeout: float = 120) -> None:
        marker = self.dir / f"paused-{step}"
        end = time.monotonic() + timeout
        while not marker.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"fit exited with {self.proc.returncode} before step {step}:\n{self.stderr()}")
            if time.monotonic() > end:
                self.proc.kill()
                raise AssertionError(f"fit did not reach step {step} within {timeout} s")
            time.sleep(0.02)

    def wait(self, timeout: float = 120) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self.out.close()
            self.err.close()
        return code

    def stderr(self) -> str:
        if not self.err.closed:
            self.err.flush()
        return (self.dir / "stderr.txt").read_text()

    def steps(self) -> dict[int, list[str]]:
        path = self.dir / "steps.jsonl"
        out: dict[int, list[str]] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            rec = json.loads(line)
            out[rec["step"]] = rec["ids"]
        return out


def finished_fit(tmp_path: Path, name: str, root: Path, corpus: Path, **config) -> Run:
    """A fit into ``root`` (``write_config`` options), run to its end; its YAML is ``tmp_path/<name>.yaml``."""
    run = Run(fit_command(write_config(tmp_path / f"{name}.yaml", root, corpus, **config)), tmp_path / name)
    assert run.wait() == 0, run.stderr()
    return run


def ahamask_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ahamask: ")]


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def mask_logits(path: Path) -> torch.Tensor:
    from ahamask_lightning.masking import load_mask

    return load_mask(path).logits


@pytest.fixture(scope="session")
def reference(good_corpus, tmp_path_factory) -> dict:
    """The uninterrupted run (15 steps), checkpointing every step: mask-step{N} for each N."""
    base = tmp_path_factory.mktemp("reference")
    cfg = write_config(base / "fit.yaml", base / "root", good_corpus, every=1, max_steps=15)
    run = Run(fit_command(cfg), base / "faults")
    assert run.wait() == 0, run.stderr()
    ckdir = base / "root" / "checkpoints"
    final = next((base / "root").rglob("mask.safetensors"))
    return {"config": cfg, "ckdir": ckdir, "steps": run.steps(), "last": load_ckpt(ckdir / "last.ckpt"),
            "final": mask_logits(final), "step": lambda n: mask_logits(ckdir / f"mask-step{n}.safetensors")}
