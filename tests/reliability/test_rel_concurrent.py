"""Two fits into one ``default_root_dir``. Started at the same time, the second stops in one line
before it writes anything and the first one's files are all its own. Started after the first has
finished, the second stops in one line too (resume with ``--ckpt_path last`` or choose another
folder); a driver (``make demo``, ``reproduce``) run again replaces its own earlier run."""
from __future__ import annotations

import pytest
import torch
from conftest import Run, ahamask_lines, finished_fit, fit_command, load_ckpt, mask_logits, write_config


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



def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.fault("a new fit into a folder where an earlier fit finished",
                   kept="the new fit stops in one line before writing; every file of the earlier fit is unchanged, "
                        "and --ckpt_path last still resumes it")
def test_new_fit_into_a_finished_fits_folder_is_refused(good_corpus, tmp_path):
    root = tmp_path / "root"
    finished_fit(tmp_path, "first", root, good_corpus, every=5, max_steps=10)
    before = _files(root)
    assert "checkpoints/mask-step10.safetensors" in before and "checkpoints/last.ckpt" in before
    # another experiment (more steps) started in the same folder without --ckpt_path
    second = Run(fit_command(write_config(tmp_path / "other.yaml", root, good_corpus, every=5, max_steps=15)),
                 tmp_path / "second")
    code, err = second.wait(), second.stderr()
    lines = ahamask_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ahamask: error: trainer.default_root_dir: {root} holds an earlier fit's "
                               f"checkpoints ({root / 'checkpoints'}"), lines[0]
    assert "--ckpt_path last" in lines[0]
    assert second.steps() == {}
    assert _files(root) == before  # nothing written, nothing overwritten, no new log version
    resumed = Run(fit_command(tmp_path / "other.yaml", "--ckpt_path", "last"), tmp_path / "resumed")
    assert resumed.wait() == 0, resumed.stderr()
    assert sorted(resumed.steps()) == list(range(10, 15))  # continued at step 10, not from scratch
    assert load_ckpt(root / "checkpoints" / "last.ckpt")["global_step"] == 15


def test_a_driver_fit_run_again_replaces_its_own_earlier_run(good_corpus, tmp_path, capsys):
    from ahamask_lightning.experiment import fit_mask

    cfg = write_config(tmp_path / "fit.yaml", tmp_path / "unused", good_corpus, every=5, max_steps=5)
    out = tmp_path / "driver"
    first = mask_logits(fit_mask(str(cfg), out))
    assert "replacing" not in capsys.readouterr().err
    again = fit_mask(str(cfg), out)
    assert f"ahamask: {out}: replacing the earlier run of this fit" in capsys.readouterr().err
    assert torch.equal(mask_logits(again), first)  # the same fit, trained again from scratch
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "last.ckpt" in names and not any("-v" in n for n in names), names  # no versioned copies beside old ones
