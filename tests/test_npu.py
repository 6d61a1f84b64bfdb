"""The Ascend NPU accelerator without an NPU: registration, the one-line error, and the wiring.

torch_npu cannot be installed here, so the wiring is checked in a fresh interpreter where a stand-in
does what torch_npu's import does (rename torch's privateuse1 backend to ``npu`` and register a
``torch.npu`` device module): the accelerator, strategies and precision plugin must then produce
``torch.device("npu", i)``, the ``hccl`` backend and ``torch.autocast(device_type="npu")`` --
without running anything on the device.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest

from ahamask_lightning.accelerators import (
    NPU_MISSING,
    NPUAccelerator,
    check_trainer_config,
    require_npu,
    uses_npu,
)
from ahamask_lightning.accelerators import npu as npu_module
from ahamask_lightning.cli import lightning as cli_lightning
from ahamask_lightning.cli.main import main as ahamask

REPO = Path(__file__).resolve().parents[1]
BASE = "experiments/gr_qwen2audio_instruct.yaml"
NPU = "experiments/accelerators/npu.yaml"
AHAMASK = str(Path(sys.executable).with_name("ahamask"))

pytestmark = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("torch_npu") is not None, reason="torch_npu is installed here")


def test_registered_with_lightning():
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    assert "npu" in AcceleratorRegistry.available_accelerators()
    assert {"npu_single", "ddp_npu"} <= set(StrategyRegistry.available_strategies())
    assert NPUAccelerator.is_available() is False  # must not raise: Lightning polls every accelerator


def test_missing_torch_npu_is_one_line():
    with pytest.raises(RuntimeError) as err:
        require_npu()
    assert str(err.value) == NPU_MISSING and "\n" not in NPU_MISSING
    with pytest.raises(RuntimeError, match="torch_npu is not installed"):
        L.Trainer(accelerator="npu", logger=False)


@pytest.mark.parametrize("trainer, expected", [
    ({"accelerator": "npu"}, True),
    ({"accelerator": "cuda", "strategy": "ddp_npu"}, True),
    ({"strategy": {"class_path": "ahamask_lightning.accelerators.NPUSingleDeviceStrategy"}}, True),
    ({"plugins": [{"class_path": "ahamask_lightning.accelerators.npu.NPUMixedPrecision"}]}, True),
    ({"accelerator": "cuda", "strategy": {"class_path": "ahamask_lightning.accelerators.MaskDDPStrategy"}}, False),
    ({"accelerator": "cpu", "strategy": "ddp"}, False),
    (None, False),
])
def test_which_configs_ask_for_the_npu(trainer, expected):
    assert uses_npu(trainer) is expected
    if not expected:
        check_trainer_config(trainer)  # nothing to complain about


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([AHAMASK, *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_print_config_shows_the_npu():
    out = _run(["fit", "--config", BASE, "--config", NPU, "--print_config"])
    assert out.returncode == 0, out.stderr
    assert "accelerator: npu" in out.stdout
    assert "class_path: ahamask_lightning.accelerators.NPUSingleDeviceStrategy" in out.stdout
    assert "class_path: ahamask_lightning.models.Qwen2AudioAdapter" in out.stdout  # the experiment is intact


class HookedCLI(cli_lightning.AHAMaskCLI):
    """AHAMaskCLI plus exactly the two lines this package asks cli/lightning.py to carry."""

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        cfg = self.config.get(self.config.subcommand) if self.subcommand else self.config
        check_trainer_config(cfg.get("trainer"))


MISSING = "torch_npu is not installed (pip install torch-npu, with the Ascend CANN toolkit)"
FRAGMENTS = "experiments/accelerators/npu.yaml or experiments/strategies/ddp_npu.yaml"
# The one line names what asked for the NPU and gives advice that works for it: a YAML fragment's
# NPU strategy stays when only --trainer.accelerator is changed.
MISSING_LINES = {
    "fragment": ("trainer.accelerator: npu and trainer.strategy: NPUSingleDeviceStrategy ask for an Ascend NPU, "
                 f"but {MISSING}; drop {FRAGMENTS} from the --config list, or add --trainer.accelerator cuda|cpu "
                 "--trainer.strategy auto"),
    "flag": f"trainer.accelerator: npu asks for an Ascend NPU, but {MISSING}; use --trainer.accelerator cuda|cpu",
    "fragment_cpu": (f"trainer.strategy: NPUSingleDeviceStrategy asks for an Ascend NPU, but {MISSING}; drop "
                     f"{FRAGMENTS} from the --config list, or add --trainer.strategy auto"),
}
ASKING = {"fragment": ["--config", NPU], "flag": ["--trainer.accelerator", "npu"],
          "fragment_cpu": ["--config", NPU, "--trainer.accelerator", "cpu"]}


@pytest.mark.parametrize("asking", ["fragment", "flag"])
def test_hook_fails_before_the_model_is_built(asking, in_repo, tmp_path):
    # BASE has pretrained: null, so an adapter built first would fail on the missing weights instead.
    with pytest.raises(RuntimeError) as err:
        HookedCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                  auto_configure_optimizers=False, run=False,
                  args=["--config", BASE, *ASKING[asking], "--trainer.default_root_dir", str(tmp_path)])
    assert str(err.value) == MISSING_LINES[asking]


@pytest.mark.parametrize("asking", ["fragment", "flag", "fragment_cpu"])
def test_ahamask_fit_on_npu_without_torch_npu(asking, in_repo, tmp_path, capsys):
    # pretrained=null: had the adapter been built first, the error would name the missing weights.
    assert ahamask(["fit", "--config", BASE, *ASKING[asking], "--trainer.default_root_dir", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("Seed set")]
    assert err == [f"ahamask: error: {MISSING_LINES[asking]}"]


def test_the_missing_torch_npu_advice_works(in_repo, tmp_path, capsys):
    # npu.yaml + --trainer.accelerator cpu keeps the NPU strategy, so that flag alone (the old advice) did
    # not help; the flags the line advises now give a config without the NPU.
    assert ahamask(["fit", "--config", BASE, *ASKING["fragment_cpu"], "--trainer.default_root_dir", str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "or add --trainer.strategy auto" in line
    advised = line.rsplit("or add ", 1)[1].split()
    out = _run(["fit", "--config", BASE, *ASKING["fragment_cpu"], *advised, "--print_config"])
    assert out.returncode == 0, out.stderr
    assert "  accelerator: cpu\n" in out.stdout and "  strategy: auto\n" in out.stdout
    assert "NPU" not in out.stdout


@pytest.fixture
def npu_here(monkeypatch):
    """check_trainer_config on a machine with two NPUs (the config logic only: nothing is built)."""
    monkeypatch.setattr(npu_module, "npu_unavailable", lambda: None, raising=False)
    monkeypatch.setattr(npu_module, "require_npu", lambda: SimpleNamespace(device_count=lambda: 2))


SINGLE = "ahamask_lightning.accelerators.NPUSingleDeviceStrategy"
DDP_NPU = "ahamask_lightning.accelerators.NPUDDPStrategy"


@pytest.mark.parametrize("trainer, strategy", [
    # the documented flag form: Lightning's "auto" would be SingleDeviceStrategy("cpu") or plain DDP
    ({"accelerator": "npu", "devices": 1}, {"class_path": SINGLE}),
    ({"accelerator": "npu", "devices": [1]}, {"class_path": SINGLE, "init_args": {"device": 1}}),
    ({"accelerator": "npu", "devices": "1,"}, {"class_path": SINGLE, "init_args": {"device": 1}}),
    ({"accelerator": "npu", "strategy": "auto", "devices": 2}, {"class_path": DDP_NPU}),
    ({"accelerator": "npu"}, {"class_path": DDP_NPU}),  # devices auto: both NPUs, as Lightning does for CUDA
    ({"accelerator": "npu", "devices": -1}, {"class_path": DDP_NPU}),
    # npu.yaml's single strategy takes its device from a one-element list
    ({"accelerator": "npu", "devices": [1], "strategy": {"class_path": SINGLE, "init_args": {"device": 0}}},
     {"class_path": SINGLE, "init_args": {"device": 1}}),
    ({"accelerator": "npu", "devices": [1], "strategy": "npu_single"}, {"class_path": SINGLE, "init_args": {"device": 1}}),
])
def test_npu_accelerator_gets_the_npu_strategy(npu_here, trainer, strategy):
    check_trainer_config(trainer)
    assert trainer.get("strategy") == strategy and trainer["accelerator"] == "npu"
    check_trainer_config(trainer)  # idempotent: the CLI may call it again
    assert trainer.get("strategy") == strategy


@pytest.mark.parametrize("trainer, line", [
    ({"accelerator": "npu", "devices": -1, "strategy": {"class_path": "ahamask_lightning.accelerators.MaskDDPStrategy"}},
     ("trainer.strategy: MaskDDPStrategy does not run on the NPU (trainer.accelerator: npu); use --config "
     "experiments/strategies/ddp_npu.yaml (several NPUs) or experiments/accelerators/npu.yaml alone (one NPU) instead")),
    ({"accelerator": "npu", "strategy": "fsdp"}, "trainer.strategy: fsdp does not run on the NPU"),
    ({"accelerator": "npu", "devices": 1, "strategy": "ddp"}, "trainer.strategy: ddp does not run on the NPU"),
    ({"accelerator": "npu", "devices": 2, "strategy": {"class_path": SINGLE, "init_args": {"device": 0}}},
     ("trainer.devices: 2 selects several NPUs, but trainer.strategy NPUSingleDeviceStrategy runs on one; for several "
     "use --config experiments/strategies/ddp_npu.yaml, for one pick it with --trainer.devices [i]")),
    ({"accelerator": "npu", "devices": [0, 1], "strategy": "npu_single"}, "trainer.devices: [0, 1] selects several NPUs"),
    ({"accelerator": "npu", "devices": -1, "strategy": "npu_single"}, "trainer.devices: -1 selects several NPUs"),
    ({"accelerator": "cpu", "strategy": {"class_path": SINGLE}},
     ("trainer.strategy: NPUSingleDeviceStrategy runs on the NPU only, but trainer.accelerator is cpu; add "
     f"--trainer.strategy auto, or drop {FRAGMENTS}")),
])
def test_npu_strategy_mismatch_is_one_line(npu_here, trainer, line):
    with pytest.raises(ValueError) as err:
        check_trainer_config(trainer)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


# transformers would take the stand-in for the real torch_npu and import its kernels: let it look
# (and cache "no NPU") first, as on a machine where torch_npu only serves Lightning.
PRELUDE = """
import transformers.utils
transformers.utils.is_torch_npu_available()
import ahamask_lightning.module, ahamask_lightning.models, transformers.models.qwen2_audio.modeling_qwen2_audio
"""

FAKE_TORCH_NPU = """
import importlib.machinery, sys, types, torch
torch.utils.rename_privateuse1_backend("npu")  # what importing torch_npu does
npu = types.ModuleType("torch.npu")
npu.is_available = lambda: True
npu.device_count = lambda: 2
npu.set_device = lambda device: None
npu.get_amp_supported_dtype = lambda: [torch.float16, torch.bfloat16]
torch._register_device_module("npu", npu)  # as torch_npu registers itself: the stand-in does what the plug-in does
sys.modules["torch_npu"] = types.ModuleType("torch_npu")
sys.modules["torch_npu"].__spec__ = importlib.machinery.ModuleSpec("torch_npu", None)
"""

WIRING = """
import json, sys, lightning as L, torch
from lightning.pytorch.cli import LightningCLI
from ahamask_lightning.accelerators import NPUAccelerator, NPUMixedPrecision, NPUSingleDeviceStrategy
from ahamask_lightning.cli.lightning import AHAMaskCLI
out = {}
out["parse"] = [str(d) for d in NPUAccelerator.get_parallel_devices(NPUAccelerator.parse_devices("0,1"))]
out["single"] = str(NPUSingleDeviceStrategy().root_device)
from ahamask_lightning.accelerators import check_devices
check_devices({"accelerator": "npu", "devices": "0,1"})  # both stand-in NPUs: fine
out["refused"] = []
for devices in (4, [0, 5]):
    try:
        check_devices({"accelerator": "npu", "devices": devices})
    except ValueError as exc:
        out["refused"].append(str(exc))
t = L.Trainer(accelerator="npu", strategy="ddp_npu", devices=-1, precision="16-mixed", logger=False,
              default_root_dir=sys.argv[1])
cm = t.precision_plugin.autocast_context_manager()
out["ddp"] = {"root": str(t.strategy.root_device), "devices": [str(d) for d in t.strategy.parallel_devices],
              "backend": t.strategy.process_group_backend, "precision": type(t.precision_plugin).__name__,
              "autocast": [cm.device, str(cm.fast_dtype)], "scaler": type(t.precision_plugin.scaler).__name__}
def cli(*configs, extra=()):
    args = [a for c in configs for a in ("--config", c)] + ["--trainer.logger", "false", *extra,
                                                            "--trainer.default_root_dir", sys.argv[1]]
    c = AHAMaskCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                   auto_configure_optimizers=False, run=False, args=args)
    s, p = c.trainer.strategy, c.trainer.precision_plugin
    return {"strategy": type(s).__name__, "root": str(s.root_device), "precision": type(p).__name__,
            "autocast": getattr(p, "device", None), "model_on": str(next(c.model.parameters()).device),
            "backend": getattr(s, "process_group_backend", None)}
out["cli_single"] = cli("experiments/gr_qwen2audio_tiny.yaml", "experiments/accelerators/npu.yaml",
                        extra=["--trainer.precision", "bf16-mixed"])
out["cli_ddp"] = cli("experiments/gr_qwen2audio_tiny.yaml", "experiments/strategies/ddp_npu.yaml")
# Lightning's own process-group set-up and DDP wrap, with gloo standing in for hccl on the "npu".
import os, socket, torch.distributed as dist
dist.Backend.register_backend("hccl", lambda store, rank, size, timeout: dist.ProcessGroupGloo(store, rank, size,
                                                                                              timeout), devices=["npu"])
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(sock.getsockname()[1]))
s = L.Trainer(accelerator="npu", strategy="ddp_npu", devices=1, logger=False, default_root_dir=sys.argv[1]).strategy
s.setup_distributed()
s.model = L.LightningModule()
s.model.layer = torch.nn.Linear(2, 2)  # stays on the CPU: the stand-in NPU holds no tensors
s.configure_ddp()
out["init"] = {"backend": dist.get_backend(), "bound": str(dist.group.WORLD.bound_device_id),
               "device_ids": s.determine_ddp_device_ids(), "wrapped": type(s.model).__name__,
               "world": dist.get_world_size()}
dist.destroy_process_group()
print("RESULT " + json.dumps(out))
"""


def run_with_stand_in_npu(body: str, tmp_path: Path) -> dict:
    """Run ``body`` in a fresh interpreter with the stand-in torch_npu; the dict it prints as RESULT."""
    script = tmp_path / "stand_in.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(FAKE_TORCH_NPU) + textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], check=False, cwd=REPO, capture_output=True,
                          text=True, timeout=180, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_wiring_with_a_renamed_privateuse1_backend(tmp_path):
    out = run_with_stand_in_npu(WIRING, tmp_path)
    assert out["parse"] == ["npu:0", "npu:1"] and out["single"] == "npu:0"
    assert out["refused"] == ["trainer.devices: 4 asks for 4 npu devices, 2 visible",
                              "trainer.devices: index 5 does not exist: 2 npu devices visible (0 to 1)"]
    assert out["ddp"] == {"root": "npu:0", "devices": ["npu:0", "npu:1"], "backend": "hccl",
                          "precision": "NPUMixedPrecision", "autocast": ["npu", "torch.float16"],
                          "scaler": "GradScaler"}
    assert out["cli_single"] == {"strategy": "NPUSingleDeviceStrategy", "root": "npu:0",
                                 "precision": "NPUMixedPrecision", "autocast": "npu", "model_on": "cpu",
                                 "backend": None}
    assert out["cli_ddp"]["strategy"] == "NPUDDPStrategy" and out["cli_ddp"]["backend"] == "hccl"
    assert out["cli_ddp"]["root"] == "npu:0" and out["cli_ddp"]["model_on"] == "cpu"  # nothing ran on it
    # Lightning's own set-up: hccl bound to the rank's NPU, and DDP wrapped without a CUDA stream.
    assert out["init"] == {"backend": "hccl", "bound": "npu:0", "device_ids": None,
                           "wrapped": "DistributedDataParallel", "world": 1}


CONFIGS = """
import json, sys, lightning as L, torch
from lightning.pytorch.plugins.precision import MixedPrecision
from ahamask_lightning.accelerators.npu import to_npu_precision
from ahamask_lightning.cli.lightning import AHAMaskCLI
out = {}
def cli(*configs, extra=()):
    args = [a for c in configs for a in ("--config", c)] + ["--trainer.logger", "false", *extra,
                                                            "--trainer.default_root_dir", sys.argv[1]]
    try:
        c = AHAMaskCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       auto_configure_optimizers=False, run=False, args=args)
    except ValueError as exc:
        return str(exc)
    s, p = c.trainer.strategy, c.trainer.precision_plugin
    scaler = getattr(p, "scaler", None)
    return {"strategy": type(s).__name__, "root": str(s.root_device), "precision": type(p).__name__,
            "autocast": getattr(p, "device", None), "scaler_enabled": scaler is not None and scaler.is_enabled(),
            "ddp_device_ids": s.determine_ddp_device_ids() if hasattr(s, "determine_ddp_device_ids") else "n/a",
            "saved_strategy": c.config.trainer.strategy.class_path.rsplit(".", 1)[-1]}
E = "experiments/gr_qwen2audio_tiny.yaml"
flag = ["--trainer.accelerator", "npu", "--trainer.precision", "16-mixed"]
out["flag_one"] = cli(E, extra=[*flag, "--trainer.devices", "1"])
out["flag_every"] = cli(E, extra=flag)
out["fragment_second_npu"] = cli(E, "experiments/accelerators/npu.yaml", extra=["--trainer.devices", "[1]"])
out["fragment_two"] = cli(E, "experiments/accelerators/npu.yaml", extra=["--trainer.devices", "2"])
out["fragment_ddp_yaml"] = cli(E, "experiments/accelerators/npu.yaml", "experiments/strategies/ddp.yaml")
mine = torch.amp.GradScaler(device="npu", init_scale=128.0)
out["own_scaler_kept"] = to_npu_precision(MixedPrecision("16-mixed", device="cuda", scaler=mine)).scaler is mine
print("RESULT " + json.dumps(out))
"""


def test_the_cli_completes_or_refuses_the_npu_strategy(tmp_path):
    # With a (stand-in) NPU: the documented flag form and npu.yaml's devices, end to end through the CLI.
    out = run_with_stand_in_npu(CONFIGS, tmp_path)
    npu_amp = {"precision": "NPUMixedPrecision", "autocast": "npu", "scaler_enabled": True}
    # Lightning alone: SingleDeviceStrategy on the CPU (one NPU) or DDP under a CUDA stream, with CUDA autocast
    assert out["flag_one"] == {"strategy": "NPUSingleDeviceStrategy", "root": "npu:0", **npu_amp,
                               "ddp_device_ids": "n/a", "saved_strategy": "NPUSingleDeviceStrategy"}
    assert out["flag_every"] == {"strategy": "NPUDDPStrategy", "root": "npu:0", **npu_amp, "ddp_device_ids": None,
                                 "saved_strategy": "NPUDDPStrategy"}
    assert out["fragment_second_npu"]["root"] == "npu:1"
    assert out["fragment_two"].startswith("trainer.devices: 2 selects several NPUs, but trainer.strategy "
                                          "NPUSingleDeviceStrategy runs on one; for several use --config "
                                          "experiments/strategies/ddp_npu.yaml")
    assert out["fragment_ddp_yaml"].startswith("trainer.strategy: MaskDDPStrategy does not run on the NPU")
    assert out["own_scaler_kept"] is True
