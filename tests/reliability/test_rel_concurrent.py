"""Two ``ahamask fit`` processes started into one ``default_root_dir`` at the same time: the second
stops in one line before it writes anything, and the first one's files are all its own."""
from __future__ import annotations

import pytest
import torch
from conftest import Run, ahamask_lines, fit_command, load_ckpt, mask_logits, write_config


@pytest.mark.fault("a second fit into the same folder while the first is training",
                   kept="the second stops in one line before writing; the first's checkpoints, mask files and "
                        "log version are its own (equal to the uninterrupted run)")
def test_second_concurrent_fit_into_one_folder_is_refused(reference, good_corpus, tmp_path):
    root = tmp_path / "root"
    cfg = write_config(tmp_path / "fit.yaml", root, good_corpus, every=5, max_steps=15)
    first = Run(fit_command(cfg), tmp_path / "first", pause_at="3")
    first.wait_for_pause(3)  # the first fit is training (and holds the folder) now
    second = Run(fit_command(cfg), tmp_path / "second")
    code, err = second.wait(), second.stderr()
    lines = ahamask_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("ahamask: error: trainer.default_root_dir: another ahamask fit is writing to ")
    assert str(root) in lines[0]
    assert second.steps() == {}  # it never trained
    (first.dir / "resume-3").write_text("")
    assert first.wait() == 0, first.stderr()
    ckdir = root / "checkpoints"
    assert load_ckpt(ckdir / "last.ckpt")["global_step"] == 15
    for step in (5, 10, 15):
        assert torch.equal(mask_logits(ckdir / f"mask-step{step}.safetensors"), reference["step"](step)), step
    versions = sorted(p.name for p in (root / "lightning_logs").iterdir())
    assert versions == ["version_0"], versions  # the second fit made no log version of its own
    assert torch.equal(mask_logits(root / "lightning_logs" / "version_0" / "mask.safetensors"), reference["final"])

