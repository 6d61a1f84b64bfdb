"""A full disk: every file a fit writes stays whole, the fit stops in one line without trying a
second save, and ``--ckpt_path last`` resumes from the newest checkpoint that loads.

The disk is a small tmpfs mounted for the test (skipped where mounting is not allowed).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import pytest
import torch
from conftest import Run, ahamask_lines, fit_command, load_ckpt, write_config

from ahamask_lightning.cli.main import main as ahamask
from ahamask_lightning.cli.run_files import AtomicCheckpointIO, newest_loadable


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path) -> None:
    from ahamask_faults import fill_disk

    fill_disk(path)


@pytest.mark.fault("atomic checkpoint write on a full disk", kept="the previous file whole; no temporary file left")
def test_atomic_checkpoint_io_keeps_the_old_file_on_a_full_disk(small_disk):
    target = small_disk / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.zeros(16)}, target)
    _fill(small_disk / "filler")
    with pytest.raises(OSError) as err:
        io.save_checkpoint({"step": 2, "w": torch.randn(200_000)}, target)
    assert err.value.errno == errno.ENOSPC and str(target) in str(err.value)
    assert torch.load(target, weights_only=True)["step"] == 1
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "last.ckpt"]


@pytest.mark.fault("disk full in step 6 (tmpfs filled up), then space freed and --ckpt_path last",
                   kept="one line, no second save; every checkpoint and mask file loads; the resumed fit ends "
                        "equal to the uninterrupted run")
def test_disk_full_stops_in_one_line_and_last_resumes(reference, good_corpus, small_disk, tmp_path):
    root = small_disk / "root"
    cfg = write_config(tmp_path / "fit.yaml", root, good_corpus, every=1, max_steps=15)
    filler = small_disk / "filler"
    run1 = Run(fit_command(cfg), tmp_path / "run1", fill_disk_at="6", fill_disk_path=str(filler))
    code, err = run1.wait(), run1.stderr()
    lines = ahamask_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    ckdir = root / "checkpoints"
    assert lines[0].startswith("ahamask: error: disk full at step 6: ")
    assert f"newest checkpoint that loads: {ckdir / 'last.ckpt'}" in lines[0]
    assert not (ckdir / "interrupted.ckpt").exists()  # no second save on a full disk
    for path in [*root.rglob("*.ckpt"), *root.rglob("*.safetensors")]:
        assert path.stat().st_size > 0
        if path.suffix == ".ckpt":
            load_ckpt(path)
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert load_ckpt(ckdir / "last.ckpt")["global_step"] == 5
    for report in root.rglob("fit_report.json"):
        json.loads(report.read_text())  # whole, or not there
    filler.unlink()
    run2 = Run(fit_command(cfg, "--ckpt_path", "last"), tmp_path / "run2")
    assert run2.wait() == 0, run2.stderr()
    assert min(run2.steps()) == 5
    final = load_ckpt(ckdir / "last.ckpt")
    assert final["global_step"] == 15
    assert torch.equal(final["state_dict"]["head_mask.logits"], reference["last"]["state_dict"]["head_mask.logits"])


@pytest.mark.fault("newest last.ckpt truncated (an older writer's partial file), older interrupted.ckpt whole",
                   kept="--ckpt_path last resumes from the newest checkpoint that loads and names the one skipped")
def test_ckpt_path_last_skips_a_truncated_newest_checkpoint(reference, tmp_path, capsys):
    ckdir = tmp_path / "root" / "checkpoints"
    ckdir.mkdir(parents=True)
    whole = ckdir / "interrupted.ckpt"
    shutil.copy(reference["ckdir"] / "last.ckpt", whole)
    cut = ckdir / "last.ckpt"
    cut.write_bytes((reference["ckdir"] / "last.ckpt").read_bytes()[:4000])
    os.utime(whole, (1_000_000, 1_000_000))  # the truncated file is the newer one
    step = load_ckpt(whole)["global_step"]
    code = ahamask(["fit", "--config", str(reference["config"]), "--trainer.default_root_dir", str(tmp_path / "root"),
                    "--trainer.max_steps", str(step + 1), "--ckpt_path", "last"])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ahamask:")]
    assert code == 0, lines
    assert any(x.startswith(f"ahamask: ckpt_path=last: resuming from {whole} ({cut}: not readable") for x in lines)
    newest, _ = newest_loadable([ckdir])  # the fit went on from the whole checkpoint
    assert load_ckpt(newest)["global_step"] == step + 1
