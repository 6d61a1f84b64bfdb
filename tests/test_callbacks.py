"""Schedules: temperature presets, sparsity warm-up and where lambda is set, the learning-rate curve."""
from __future__ import annotations

import json

import lightning as L
import pytest

from ahamask_lightning.callbacks import SparsityPenalty, TemperatureAnnealing
from ahamask_lightning.module import warmup_cosine


def test_paper_preset_is_linear_4_to_0_5_then_held():
    cb = TemperatureAnnealing("paper")
    assert cb.value(0, 3000) == 4.0
    assert cb.value(1500, 3000) == pytest.approx(2.25)
    assert cb.value(3000, 3000) == pytest.approx(0.5)
    assert cb.value(9000, 3000) == pytest.approx(0.5)


def test_official_preset_anneals_over_30_percent_of_the_run():
    class FakeTrainer:
        estimated_stepping_batches = 1000

    cb = TemperatureAnnealing("official")
    n = cb.anneal_steps(FakeTrainer())
    assert n == 300
    assert cb.value(150, n) == pytest.approx((4.0 + 0.05) / 2)
    assert cb.value(300, n) == pytest.approx(0.05)
    # the run's length is the learning-rate schedule's: on a resume, the checkpoint run's
    assert cb.anneal_steps(FakeTrainer(), run_steps=400) == 120


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="preset"):
        TemperatureAnnealing("fast")


def test_sparsity_warmup():
    cb = SparsityPenalty(lam=1e-4, warmup_steps=100)
    assert cb.value(0) == 0.0 and cb.value(50) == pytest.approx(5e-5) and cb.value(500) == pytest.approx(1e-4)


def test_learning_rate_warmup_then_cosine():
    import torch

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    sched = warmup_cosine(opt, 3000, 30000, 1e-6, 1e-2, 1e-4)
    lrs = []
    for _ in range(30101):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[1500] == pytest.approx((1e-6 + 1e-2) / 2)
    assert lrs[3000] == pytest.approx(1e-2)
    assert lrs[16500] == pytest.approx((1e-2 + 1e-4) / 2)
    assert lrs[30000] == pytest.approx(1e-4)
    assert lrs[30100] == pytest.approx(1e-4)  # held at the end, not a restarted cosine


def test_a_callback_lambda_that_disagrees_with_the_models_is_refused(tmp_path, in_repo):
    from ahamask_lightning.cli.lightning import AHAMaskCLI

    callback = json.dumps({"class_path": "ahamask_lightning.callbacks.SparsityPenalty", "init_args": {"lam": 1e-3}})
    with pytest.raises(ValueError, match=r"SparsityPenalty.lam=0.001 and model.init_args.sparsity_lambda=0.0001"):
        AHAMaskCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                   auto_configure_optimizers=False, run=False,
                   args=["--config", "experiments/gr_tiny.yaml", "--trainer.default_root_dir", str(tmp_path),
                         "--model.init_args.sparsity_lambda", "1e-4", f"--trainer.callbacks+={callback}"])



@pytest.mark.parametrize("callback", [TemperatureAnnealing("paper"), SparsityPenalty()])
def test_schedule_callbacks_act_through_the_modules_schedule_interface(callback):
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm
    from ahamask_lightning.module import AHAMaskModule

    module = AHAMaskModule(random_tiny_lalm(["male female"], layers=2, heads=4, hidden=32), sparsity_lambda=1e-3)
    callback.setup(None, module, "fit")  # accepted
    module.set_temperature(0.25)
    module.set_sparsity_lambda(2e-3)
    assert float(module.head_mask.temperature) == 0.25 and module.sparsity_lambda == 2e-3
    assert module.configured_sparsity_lambda == 1e-3  # the built value stays what SparsityPenalty schedules
    with pytest.raises(TypeError, match=rf"^{type(callback).__name__} schedules an AHAMaskModule.*got a LightningModule"):
        callback.setup(None, L.LightningModule(), "fit")
