"""How a run's settings reach the AHAMaskModule: the command line's evaluation options win over a
checkpoint's, a test needs a mask to test, per-sample masks stay independent across data-parallel
ranks, a resume keeps its temperature schedule under every strategy and each rank's own CUDA random
state, and a mask learned on another model is named."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.utils.data import DataLoader

from ahamask_lightning.callbacks import TemperatureAnnealing
from ahamask_lightning.cli.main import main as ahamask
from ahamask_lightning.data.collate import SampleCollate
from ahamask_lightning.masking import HeadMask, save_mask
from ahamask_lightning.module import EVALUATION_OPTIONS, AHAMaskModule, NoMaskToEvaluateError

CONFIG = "experiments/gr_qwen2audio_tiny.yaml"
TEXTS = ["male", "female"]


def _data_args(corpus: Path) -> list[str]:
    m = corpus / "manifests"
    return ["--data.init_args.train", f"[{m}/train/gr.jsonl]", "--data.init_args.val", f"[{m}/val/gr.jsonl]",
            "--data.init_args.test", f"[{m}/test/gr.jsonl]"]


def test_test_from_a_checkpoint_runs_the_condition_the_command_line_asks_for(synth_corpus, tmp_path, in_repo):
    """LightningCLI applies a checkpoint's hyperparameters over the command line: the evaluation
    options are not among them, so ``--ckpt_path`` cannot turn the asked baseline into the masked run."""
    root = tmp_path / "fit"
    assert ahamask(["fit", "--config", CONFIG, *_data_args(synth_corpus), "--trainer.default_root_dir", str(root),
                    "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]) == 0
    ckpt = next(root.rglob("last.ckpt"))
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert not set(saved) & set(EVALUATION_OPTIONS) and saved["estimator"] == "logistic"
    asked = tmp_path / "asked"
    assert ahamask(["test", "--config", CONFIG, *_data_args(synth_corpus), "--ckpt_path", str(ckpt),
                    "--model.init_args.use_mask", "false", "--model.init_args.prompt", "task",
                    "--model.init_args.results_dir", str(asked), "--trainer.limit_test_batches", "1",
                    "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "test")]) == 0
    run = json.loads((asked / "test_metrics.json").read_text())["run"]
    assert (run["use_mask"], run["prompt"], run["active_heads"]) == (False, "task", None)


def test_test_without_a_mask_stops_before_the_model_is_built(synth_corpus, tmp_path, in_repo, capsys, monkeypatch):
    import ahamask_lightning.models.qwen2_audio as qa

    monkeypatch.setattr(qa, "tiny_config", lambda *a, **k: pytest.fail("the model was built before the error"))
    code = ahamask(["test", "--config", CONFIG, *_data_args(synth_corpus), "--trainer.logger", "false",
                    "--trainer.default_root_dir", str(tmp_path)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ahamask:")]
    assert code == 2 and len(err) == 1, err
    assert "model.init_args.mask: `test` with the mask on needs one" in err[0]
    assert not list(tmp_path.rglob("test_metrics.json"))


def _tiny_adapter(seed: int = 0):
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm

    torch.manual_seed(seed)
    return random_tiny_lalm(TEXTS, layers=2, heads=4, hidden=32)


def test_the_module_refuses_to_evaluate_its_initial_logits(tmp_path):
    """Used from Python, without the CLI: every head of the initial logits is on, which is the model
    without a mask, not a learned one."""
    with pytest.raises(NoMaskToEvaluateError, match="no mask to evaluate"):
        AHAMaskModule(_tiny_adapter()).check_mask_to_evaluate()
    AHAMaskModule(_tiny_adapter(), use_mask=False).check_mask_to_evaluate()
    save_mask(tmp_path / "m.safetensors", torch.ones(2, 4))
    AHAMaskModule(_tiny_adapter(), mask=str(tmp_path / "m.safetensors")).check_mask_to_evaluate()


def test_per_sample_masks_of_data_parallel_ranks_are_the_global_batchs_draws():
    """Ranks keep their generators in step; each keeps its own rows of one draw for the global batch,
    so rank r's samples get other masks than rank 0's, and together they are one device's draw."""
    head = HeadMask(6, 8, init_mean=0.0, init_std=1.0).train()
    ranks = []
    for rank in range(2):
        torch.manual_seed(0)
        ranks.append(head(4, rank=rank, world_size=2).detach())
    torch.manual_seed(0)
    one_device = head(8).detach()
    assert torch.equal(torch.cat(ranks), one_device)
    assert not torch.equal(ranks[0], ranks[1])


class _ListData(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.items = [{"id": f"s{i}", "task": "gr", "text": TEXTS[i % 2], "audio": 0.1 * torch.randn(8000, generator=g),
                       "instruction": None, "meta": {}} for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class _RestoreAfterSetup(SingleDeviceStrategy):
    """The order of FSDP, DeepSpeed and ModelParallel: optimizers are configured before the checkpoint loads."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


class _Temperatures(L.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.seen.append(round(float(module.head_mask.temperature), 4))


def _fit(max_steps: int, root: Path, ckpt: str | None = None, strategy=None) -> tuple[AHAMaskModule, _Temperatures]:
    L.seed_everything(0)
    module = AHAMaskModule(_tiny_adapter(), warmup_steps=2, lr=0.1)
    temperatures = _Temperatures()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, strategy=strategy or "auto",
                        callbacks=[TemperatureAnnealing(preset="official"), temperatures,
                                   ModelCheckpoint(dirpath=root, every_n_train_steps=4, save_top_k=-1)])
    data = DataLoader(_ListData(40), batch_size=2, collate_fn=SampleCollate(module.adapter, "none", 0))
    trainer.fit(module, data, ckpt_path=ckpt)
    return module, temperatures


def test_a_resume_keeps_the_checkpoints_temperature_schedule_when_the_strategy_restores_after_setup(tmp_path, capsys):
    _fit(8, tmp_path / "first")
    ckpt = str(next((tmp_path / "first").glob("*step=4*.ckpt")))
    runs = {name: _fit(16, tmp_path / name, ckpt, strategy) for name, strategy in
            (("default", None), ("after_setup", _RestoreAfterSetup(device=torch.device("cpu"))))}
    assert runs["after_setup"][0].schedule_total_steps == runs["default"][0].schedule_total_steps == 8
    assert runs["after_setup"][1].seen == runs["default"][1].seen
    err = capsys.readouterr().err
    assert err.count("resuming with the checkpoint's learning-rate schedule (over 8 steps), not one over 16") == 2


def test_a_mask_learned_on_another_model_is_named(tmp_path, capsys):
    save_mask(tmp_path / "base.safetensors", torch.ones(2, 4), model_id="qwen2-audio-7b-base")
    AHAMaskModule(_tiny_adapter(), mask=str(tmp_path / "base.safetensors"))
    assert capsys.readouterr().err.strip().endswith("was learned on qwen2-audio-7b-base; this model is "
                                                    f"{_tiny_adapter().describe()['model_id']} (a transfer)")
    save_mask(tmp_path / "own.safetensors", torch.ones(2, 4), model_id=_tiny_adapter().describe()["model_id"])
    AHAMaskModule(_tiny_adapter(), mask=str(tmp_path / "own.safetensors"))
    assert capsys.readouterr().err == ""


def test_rng_checkpoints_hold_this_processs_cuda_device_state_only(monkeypatch):
    """No GPU here, so torch.cuda's RNG functions are stand-ins over two devices: a DDP rank draws on
    its own device; the state rank 0 saves for the other devices (never advanced) must not be restored."""
    from ahamask_lightning.reliability import rng_state, set_rng_state

    devices = {0: torch.tensor([7], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    current = {"device": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": devices[current["device"]].clone())
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [devices[0].clone(), devices[1].clone()])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": devices.__setitem__(current["device"], s))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: devices.update(enumerate(states)))
    saved = rng_state()  # rank 0, on cuda:0, seven draws on
    current["device"] = 1  # rank 1 resumes on cuda:1, whose generator had advanced as cuda:0's had
    devices[1] = torch.tensor([0], dtype=torch.uint8)
    set_rng_state(saved)
    assert int(devices[1]) == 7
