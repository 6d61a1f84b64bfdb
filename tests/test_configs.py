"""Every experiment YAML parses, follows the paper's settings, and builds with tiny stand-ins.

Like litgpt's check of its config hub: each YAML under experiments/ is parsed by the CLI's own
parser (alone, or a base experiment plus an accelerator/strategy fragment); a representative
subset per model family is then instantiated end to end (module, adapter, data module, callbacks,
strategy, Trainer) with the heavy parts swapped for tiny ones -- the adapter's tiny variant of the
same class, a random TinyLALM checkpoint, a CPU device -- so a broken config fails here, not after
hours of weight loading.
"""
from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.cli import LightningArgumentParser

from ahamask_lightning.cli.lightning import AHAMaskCLI
from ahamask_lightning.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
FRAGMENT_DIRS = ("accelerators", "strategies")
FRAGMENTS = sorted(p for d in FRAGMENT_DIRS for p in (EXPERIMENTS / d).glob("*.yaml"))
EXPERIMENT_FILES = sorted(p for p in EXPERIMENTS.rglob("*.yaml") if p.parent.name not in FRAGMENT_DIRS)
PAPER_TASKS = ("asr", "gr", "ser", "asv", "aac", "s2tt", "osr", "gr_asr", "asr_gr", "json")
REAL_FAMILIES = ("salmonn", "qwen2audio_instruct", "qwen2audio_base")
MANIFEST = re.compile(r"^data/(?P<corpus>[a-z0-9]+)/manifests/(?P<split>[a-z0-9_-]+)/(?P<task>[a-z0-9_]+)\.jsonl$")
# Splits `ahamask data prepare` writes per corpus (LibriSpeech keeps its subset names).
SPLITS = {
    "librispeech": {"train", "dev-clean", "dev-other", "test-clean", "test-other"},
    "iemocap": {"train", "test"}, "voxceleb": {"train", "dev", "test"}, "audiocaps": {"train", "val", "test"},
    "covost": {"train", "dev", "test"}, "libri2mix": {"train-100", "train-360", "dev", "test"},
}


class ParseOnlyCLI(AHAMaskCLI):
    """The CLI's parser, with instantiation (and its output-directory probes) switched off."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


@pytest.fixture(scope="module")
def parser() -> LightningArgumentParser:
    cli = ParseOnlyCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                       subclass_mode_data=True, auto_configure_optimizers=False, run=False,
                       args=["--config", str(EXPERIMENTS / "gr_tiny.yaml")], parser_kwargs={"exit_on_error": False})
    return cli.parser


def split_name(path: Path) -> tuple[str, str | None]:
    """``gr_asr_qwen2audio_base.yaml`` -> (``gr_asr``, ``qwen2audio_base``); (stem, None) without a task."""
    stem = path.stem
    tasks = sorted((t for t in TASKS if stem.startswith(t + "_")), key=len, reverse=True)
    return (tasks[0], stem[len(tasks[0]) + 1:]) if tasks else (stem, None)


def manifests(cfg) -> list[str]:
    args = cfg.data.init_args
    return [p for key in ("train", "val", "test", "predict") for p in (args.get(key) or [])]


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_every_experiment_parses(parser, path):
    cfg = parser.parse_args(["--config", str(path)])
    task, family = split_name(path)
    assert cfg.data.class_path == "ahamask_lightning.data.ManifestDataModule"
    if family is None:  # pretraining: a different module, all tasks
        return
    assert cfg.model.class_path == "ahamask_lightning.module.AHAMaskModule"
    assert task in TASKS, f"{path.name}: unknown task {task!r}"
    for m in manifests(cfg):
        assert Path(m).stem == task, f"{path.name}: manifest {m} is not of task {task}"


@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_every_paper_task_has_an_experiment(family):
    missing = [t for t in PAPER_TASKS if not (EXPERIMENTS / f"{t}_{family}.yaml").is_file()]
    assert not missing, f"no experiments/<task>_{family}.yaml for {missing}"


REAL = [p for p in EXPERIMENT_FILES if split_name(p)[1] in REAL_FAMILIES]


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_paper_hyperparameters(parser, path):
    cfg = parser.parse_args(["--config", str(path)])
    task, family = split_name(path)
    m, t, d = cfg.model.init_args, cfg.trainer, cfg.data.init_args
    # AdamW 1e-6 -> 1e-2 over 3000 steps then cosine to 1e-4; lambda 0; instruction-free training.
    assert (m.lr, m.warmup_lr, m.warmup_steps, m.final_lr) == (1e-2, 1e-6, 3000, 1e-4)
    assert (m.sparsity_lambda, m.prompt, m.estimator, m.use_mask) == (0.0, "none", "logistic", True)
    assert m.generation == {"num_beams": 4, "max_new_tokens": 100, "do_sample": False}
    assert d.batch_size == 8
    assert t.precision == ("16-mixed" if family == "salmonn" else "bf16-mixed")
    callbacks = {c.class_path.rsplit(".", 1)[-1]: c.init_args for c in t.callbacks}
    assert callbacks["TemperatureAnnealing"].preset == "paper" and "MaskMonitor" in callbacks
    # lambda is one override (--model.init_args.sparsity_lambda): no callback may overwrite it.
    assert "SparsityPenalty" not in callbacks
    adapter = m.model.init_args
    if family == "salmonn":
        assert m.model.class_path == "ahamask_lightning.models.salmonn.SalmonnAdapter"
        assert adapter.variant == "13b" and adapter.dtype == "float16"
        assert all(adapter[k] is None for k in ("whisper_path", "beats_path", "llm_path", "ckpt_path"))
    else:
        assert m.model.class_path == "ahamask_lightning.models.Qwen2AudioAdapter"
        assert adapter.variant == family.rsplit("_", 1)[1] and adapter.pretrained is None
    assert t.default_root_dir == f"runs/{family}/{task}"
    for path_ in manifests(cfg):
        hit = MANIFEST.match(path_)
        assert hit, f"{path.name}: {path_} is not data/<corpus>/manifests/<split>/<task>.jsonl"
        assert hit["split"] in SPLITS[hit["corpus"]], f"{path.name}: split {hit['split']} of {hit['corpus']}"


BASE_FOR_FRAGMENT = {"cpu": "gr_tiny.yaml", "cuda": "gr_qwen2audio_instruct.yaml", "npu": "gr_salmonn.yaml",
                     "ddp": "gr_salmonn.yaml", "ddp_npu": "asv_qwen2audio_base.yaml", "fsdp": "gr_salmonn.yaml"}


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fragments_combine_with_an_experiment(parser, fragment):
    base = EXPERIMENTS / BASE_FOR_FRAGMENT[fragment.stem]
    alone = parser.parse_args(["--config", str(base)])
    cfg = parser.parse_args(["--config", str(base), "--config", str(fragment)])
    # A fragment changes the trainer only; the experiment's model and data stay as they were.
    assert cfg.model == alone.model and cfg.data == alone.data
    assert cfg.trainer != alone.trainer
    expected = {"cpu": "cpu", "cuda": "cuda", "npu": "npu", "ddp_npu": "npu"}.get(fragment.stem)
    if expected:
        assert cfg.trainer.accelerator == expected
    if fragment.parent.name == "strategies":
        assert cfg.trainer.strategy.class_path.startswith("ahamask_lightning.accelerators.")


@pytest.fixture(scope="module")
def tiny_lalm_checkpoint(tmp_path_factory) -> Path:
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm

    out = tmp_path_factory.mktemp("tiny_lalm")
    random_tiny_lalm(["male female the quick brown fox", "yes no slow fast"]).save(out)
    return out


def tiny_overrides(family: str, checkpoint: Path) -> list[str]:
    """The heavy adapter swapped for the tiny variant of the same class."""
    key = "--model.init_args.model.init_args."
    if family == "salmonn":
        return [key + "variant", "tiny"]
    if family.startswith("qwen2audio"):
        return [key + "tiny", "true"]
    return [key + "checkpoint", str(checkpoint)]


# (experiment, fragments, trainer overrides): every model family, every callback, every strategy class.
INSTANTIATE = [
    ("gr_salmonn.yaml", ["accelerators/cpu.yaml"], []),
    ("aac_salmonn.yaml", ["accelerators/cuda.yaml", "strategies/fsdp.yaml"], ["--trainer.devices", "2"]),
    ("asr_qwen2audio_base.yaml", ["accelerators/cuda.yaml", "strategies/ddp.yaml"], ["--trainer.devices", "2"]),
    ("json_qwen2audio_instruct.yaml", ["accelerators/cuda.yaml"], []),
    ("gr_qwen2audio_tiny.yaml", [], []),
    ("gr_tiny.yaml", ["accelerators/cpu.yaml"], []),
    ("asv_tiny.yaml", [], []),
]


@pytest.mark.parametrize("experiment, fragments, extra", INSTANTIATE, ids=lambda v: v if isinstance(v, str) else None)
def test_instantiate_with_tiny_parts(experiment, fragments, extra, tiny_lalm_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    _, family = split_name(EXPERIMENTS / experiment)
    configs = [a for f in [experiment, *fragments] for a in ("--config", f"experiments/{f}")]
    data = [f"--data.init_args.{k}" for k in ("train", "val", "test")]
    fake = [str(tmp_path / "manifests" / s / "gr.jsonl") for s in ("train", "val", "test")]
    args = [*configs, *tiny_overrides(family, tiny_lalm_checkpoint), "--trainer.default_root_dir", str(tmp_path),
            # no CUDA here: the device is the one thing swapped; strategy, precision, callbacks stay
            "--trainer.accelerator", "cpu", *extra]
    for key, value in zip(data, fake):  # the data module is built, not read: any path does
        args += [key, f"[{value}]"]
    cli = AHAMaskCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     auto_configure_optimizers=False, run=False, args=args)
    module, trainer = cli.model, cli.trainer
    assert module.adapter.num_layers * module.adapter.num_heads == module.head_mask.logits.numel()
    assert [p for p in module.parameters() if p.requires_grad] == [module.head_mask.logits]
    names = {type(c).__name__ for c in trainer.callbacks}
    assert {"TemperatureAnnealing", "MaskMonitor"} <= names
    strategy = type(trainer.strategy).__name__
    if "strategies/ddp.yaml" in fragments:
        assert strategy == "MaskDDPStrategy" and trainer.num_devices == 2
    elif "strategies/fsdp.yaml" in fragments:
        assert strategy == "MaskFSDPStrategy" and trainer.num_devices == 2
        assert trainer.strategy.kwargs["use_orig_params"] is True
    else:
        assert strategy == "SingleDeviceStrategy"
