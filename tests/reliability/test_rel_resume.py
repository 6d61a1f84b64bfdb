"""Exact resume: SIGKILL, SIGTERM and SIGINT on real ``ahamask fit`` subprocesses (tiny Qwen2-Audio,
generated WAVs, CPU, deterministic), compared with an uninterrupted run by ``torch.equal``.

Schedule of the chain (24 samples, batch 2: 12 steps an epoch; 15 steps; checkpoint every 5):
run 1 is SIGKILLed in step 7 (last checkpoint: step 5); run 2 resumes from it (``--ckpt_path
last``) and gets SIGTERM in step 11, saves ``interrupted.ckpt`` and exits 143; run 3 resumes from
step 11, crosses the epoch boundary at step 12 and ends at 15. The chain runs with the data read
in-process and with 2 worker processes, both compared with the in-process reference.
"""
from __future__ import annotations

import signal

import pytest
import torch
from conftest import Run, ahamask_lines, finished_fit, fit_command, load_ckpt, mask_logits, write_config


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.fault("SIGKILL in step 7, resume; SIGTERM in step 11, resume (crossing an epoch)",
                   kept="mask logits, AdamW + LR state, RNG states, data position, tau/lambda schedules: "
                        "torch.equal to the uninterrupted run (read in-process), also with 2 data workers")
def test_sigkill_then_sigterm_resume_equals_uninterrupted(reference, good_corpus, tmp_path, workers):
    cfg = write_config(tmp_path / "fit.yaml", tmp_path / "root", good_corpus, every=5, max_steps=15)
    ckdir = tmp_path / "root" / "checkpoints"
    data = ("--data.num_workers", str(workers))

    run1 = Run(fit_command(cfg, *data), tmp_path / "run1", pause_at="7")
    run1.wait_for_pause(7)
    run1.proc.send_signal(signal.SIGKILL)
    assert run1.wait() == -signal.SIGKILL
    last = load_ckpt(ckdir / "last.ckpt")
    assert last["global_step"] == 5 and not (ckdir / "interrupted.ckpt").exists()
    assert torch.equal(last["state_dict"]["head_mask.logits"], reference["step"](5))

    run2 = Run(fit_command(cfg, *data, "--ckpt_path", "last"), tmp_path / "run2", pause_at="11")
    run2.wait_for_pause(11)
    run2.proc.send_signal(signal.SIGTERM)
    assert run2.wait() == 143, run2.stderr()
    lines = ahamask_lines(run2.stderr())
    assert any(line.startswith("ahamask: fit stopped by SIGTERM at step 11; checkpoint saved: ")
               and "interrupted.ckpt" in line for line in lines), lines
    assert "Traceback" not in run2.stderr()
    stopped = load_ckpt(ckdir / "interrupted.ckpt")
    assert stopped["global_step"] == 11
    assert torch.equal(stopped["state_dict"]["head_mask.logits"], reference["step"](11))

    run3 = Run(fit_command(cfg, *data, "--ckpt_path", "last"), tmp_path / "run3")
    assert run3.wait() == 0, run3.stderr()
    assert not (ckdir / "interrupted.ckpt").exists()  # a finished fit removes it
    final, ref = load_ckpt(ckdir / "last.ckpt"), reference["last"]
    assert final["global_step"] == ref["global_step"] == 15 and final["epoch"] == ref["epoch"]
    # the mask, the temperature buffer and the optimizer / LR-scheduler state
    for key in ("head_mask.logits", "head_mask.temperature"):
        assert torch.equal(final["state_dict"][key], ref["state_dict"][key]), key
    opt, ref_opt = final["optimizer_states"][0]["state"][0], ref["optimizer_states"][0]["state"][0]
    assert all(torch.equal(opt[k], ref_opt[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert final["lr_schedulers"] == ref["lr_schedulers"]
    # the RNG states and the streaming data position at the end
    rng, ref_rng = final["callbacks"]["RNGStateCheckpoint"], ref["callbacks"]["RNGStateCheckpoint"]
    assert torch.equal(rng["torch"], ref_rng["torch"]) and rng["python"] == ref_rng["python"]
    assert final["loops"]["fit_loop"]["state_dict"] == ref["loops"]["fit_loop"]["state_dict"]
    # every step consumed the same samples as in the uninterrupted run
    seen = {**run1.steps(), **run2.steps(), **run3.steps()}
    assert seen == reference["steps"] and len(seen) == 15
    assert min(run3.steps()) == 11 and min(run2.steps()) == 5
    # the mask file written at the end of fit
    masks = list((tmp_path / "root").rglob("mask.safetensors"))
    assert len(masks) == 1 and torch.equal(mask_logits(masks[0]), reference["final"])


@pytest.mark.fault("SIGINT (Ctrl-C) in step 3",
                   kept="interrupted.ckpt at step 3 equal to the uninterrupted run; exit 130, one line")
def test_sigint_writes_a_checkpoint_and_exits_cleanly(reference, good_corpus, tmp_path):
    cfg = write_config(tmp_path / "fit.yaml", tmp_path / "root", good_corpus, every=5)
    run = Run(fit_command(cfg), tmp_path / "run", pause_at="3")
    run.wait_for_pause(3)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait() == 130, run.stderr()
    err = run.stderr()
    assert "Traceback" not in err
    line = [x for x in ahamask_lines(err) if "stopped by SIGINT" in x]
    assert len(line) == 1 and line[0].startswith("ahamask: fit stopped by SIGINT at step 3; checkpoint saved: ")
    ckpt = load_ckpt(tmp_path / "root" / "checkpoints" / "interrupted.ckpt")
    assert ckpt["global_step"] == 3
    assert torch.equal(ckpt["state_dict"]["head_mask.logits"], reference["step"](3))


@pytest.mark.fault("resume with a larger max_steps than the run that wrote the checkpoint",
                   kept="the run continues with that run's learning-rate schedule, saying so in one line "
                        "(the scheduler state Lightning restores has that schedule's shape)")
def test_resume_with_more_steps_keeps_the_checkpoints_schedule(good_corpus, tmp_path):
    root = tmp_path / "root"
    # 2 steps, within the 3-step warm-up: that schedule is the warm-up alone, another shape than 6 steps'
    finished_fit(tmp_path, "short", root, good_corpus, every=1, max_steps=2)
    longer = Run(fit_command(write_config(tmp_path / "long.yaml", root, good_corpus, every=1, max_steps=6),
                             "--ckpt_path", "last"), tmp_path / "longer")
    code, err = longer.wait(), longer.stderr()
    assert code == 0 and "Traceback" not in err, err
    assert "ahamask: resuming with the checkpoint's learning-rate schedule (over 2 steps), not one over 6: the " \
           "rate holds its final value past step 2" in ahamask_lines(err)
    assert sorted(longer.steps()) == [2, 3, 4, 5]
    last = load_ckpt(root / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 6 and last["ahamask_schedule"] == {"total_steps": 2}
    # the warm-up's end (the peak, lr 0.5) is where the kept schedule holds
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.5)
