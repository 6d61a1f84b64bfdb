"""Every experiment YAML parses, follows the paper's settings, and builds with tiny stand-ins.

Like litgpt's check of its config hub: each YAML under experiments/ is parsed by the CLI's own
parser (alone, and every accelerator/strategy fragment on top of one experiment per model family),
then EVERY experiment YAML, and every fragment on top of an experiment, is instantiated end to end
(module, adapter, data module, callbacks, strategy, Trainer) with the heavy parts swapped for tiny
ones -- the adapter's tiny variant of the same class, a random TinyLALM checkpoint, a CPU device --
so a broken config fails here, not after hours of weight loading. The last tests break YAMLs on
purpose and check that this same procedure rejects them.

Experiments are composed, not copied: each starts with ``config: base/<x>.yaml`` (jsonargparse reads the
named file first, relative to the including one) and overrides single keys after it; the shared
fragments under experiments/base/ are checked here through the experiments that include them.
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import lightning as L
import pytest
import yaml
from cli_helpers import parse_only_parser
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser

from ahamask_lightning.cli.lightning import AHAMaskCLI
from ahamask_lightning.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
FRAGMENT_DIRS = ("accelerators", "strategies")
FRAGMENTS = sorted(p for d in FRAGMENT_DIRS for p in (EXPERIMENTS / d).glob("*.yaml"))
BASES = sorted((EXPERIMENTS / "base").glob("*.yaml"))  # included by experiments, never run alone
EXPERIMENT_FILES = sorted(p for p in EXPERIMENTS.rglob("*.yaml") if p.parent.name not in (*FRAGMENT_DIRS, "base"))
PAPER_TASKS = ("asr", "gr", "ser", "asv", "aac", "s2tt", "osr", "gr_asr", "asr_gr", "json")
REAL_FAMILIES = ("salmonn", "qwen2audio_instruct", "qwen2audio_base")
MANIFEST = re.compile(
    r"^data/(?P<corpus>[a-z0-9]+)/manifests/(?P<split>[a-z0-9_-]+)/(?P<task>[a-z0-9_]+)\.cuts\.jsonl\.gz$")
LIBRISPEECH_TASKS = frozenset({"asr", "gr", "gr_asr", "asr_gr", "json"})
# Split -> tasks `ahamask data prepare` writes per corpus (data_modules/<corpus>.py). LibriSpeech keeps its
# subset names and adds "train" (every train-* subset); VoxCeleb's gr splits follow vox1_meta.csv's Set column.
SPLITS = {
    "librispeech": dict.fromkeys(("train", "train-clean-100", "train-clean-360", "train-other-500", "dev-clean",
                                  "dev-other", "test-clean", "test-other", "dev-clean-2", "train-clean-5"),
                                 LIBRISPEECH_TASKS),
    "iemocap": dict.fromkeys(("train", "test"), frozenset({"ser"})),
    "voxceleb": {"train": {"asv"}, "dev": {"gr"}, "test": {"asv", "gr"}},
    "audiocaps": dict.fromkeys(("train", "val", "test"), frozenset({"aac"})),
    "clotho": dict.fromkeys(("train", "val", "test"), frozenset({"aac"})),
    "covost": dict.fromkeys(("train", "dev", "test"), frozenset({"s2tt"})),
    "libri2mix": dict.fromkeys(("train-100", "train-360", "dev", "test"), frozenset({"osr"})),
    "tedlium": dict.fromkeys(("train", "dev", "test"), frozenset({"asr", "gr"})),
    "commonvoice": dict.fromkeys(("train", "dev", "test", "validated", "other", "invalidated"),
                                 frozenset({"asr", "gr"})),
}


@pytest.fixture(scope="module")
def parser() -> LightningArgumentParser:
    return parse_only_parser(EXPERIMENTS / "gr_tiny.yaml")


def split_name(path: Path) -> tuple[str, str | None]:
    """``gr_asr_qwen2audio_base.yaml`` -> (``gr_asr``, ``qwen2audio_base``); (stem, None) without a task."""
    stem = path.stem
    tasks = sorted((t for t in TASKS if stem.startswith(t + "_")), key=len, reverse=True)
    return (tasks[0], stem[len(tasks[0]) + 1:]) if tasks else (stem, None)


def stage_paths(value) -> list[str]:
    """One stage's manifests: a list, or the values of a ``{set name: manifest(s)}`` mapping."""
    groups = value.values() if isinstance(value, dict) else [value or []]
    return [p for group in groups for p in ([group] if isinstance(group, str) else group)]


def check_prepared(config: Path, manifest: str) -> None:
    """``manifest`` is a CutSet that ``ahamask data prepare`` writes (corpus, split and task)."""
    hit = MANIFEST.match(manifest)
    assert hit, f"{config.name}: {manifest} is not data/<corpus>/manifests/<split>/<task>.cuts.jsonl.gz"
    written = SPLITS[hit["corpus"]].get(hit["split"], set())
    assert hit["task"] in written, f"{config.name}: prepare {hit['corpus']} writes no {hit['split']}/{hit['task']}"


def manifests(cfg) -> list[str]:
    args = cfg.data.init_args
    return [p for key in ("train", "val", "test", "predict") for p in stage_paths(args.get(key))]


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
        assert Path(m).name.split(".")[0] == task, f"{path.name}: manifest {m} is not of task {task}"
        if m.startswith("data/") and m.split("/")[1] in SPLITS:  # a prepared corpus (data/synth* stays JSONL)
            check_prepared(path, m)


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
    assert callbacks["LearningRateMonitor"].logging_interval == "step"
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
        check_prepared(path, path_)


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


def _class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def tiny_parts(cfg, tmp_path: Path, checkpoint: Path) -> list[str]:
    """The heavy parts of a parsed config swapped for tiny ones, chosen by the classes it names: an
    adapter with a ``tiny`` switch gets it, TinyLALM gets a random checkpoint, the TinyLALM
    pretraining gets a small tokenizer corpus, a scratch output directory and no earlier weights. A new adapter class
    without any of these fails here until this function learns it."""
    if cfg.model.class_path == "ahamask_lightning.pretrain.TinyLALMPretrain":
        corpus = tmp_path / "tokenizer.jsonl"
        corpus.write_text("".join(json.dumps({"id": f"u{i}", "audio": "a.wav", "task": "asr", "text": t}) + "\n"
                                  for i, t in enumerate(["the quick brown fox", "male female yes no"])))
        return ["--model.init_args.tokenizer_manifests", f"[{corpus}]",
                "--model.init_args.out_dir", str(tmp_path / "pretrained"),
                # stage 2's stage-1 checkpoint is not built here; a grown model's smaller one has another tokenizer
                "--model.init_args.init_from", "null", "--model.init_args.grow_from", "null"]
    adapter = cfg.model.init_args.model.class_path
    params = inspect.signature(_class(adapter)).parameters
    key = "--model.init_args.model.init_args."
    if "tiny" in params:
        return [key + "tiny", "true"]
    if "checkpoint" in params:
        return [key + "checkpoint", str(checkpoint)]
    raise AssertionError(f"{adapter}: no tiny variant known to tests/test_configs.py")


def instantiate(parser, configs: list[Path], tmp_path: Path, checkpoint: Path, extra: list[str] = ()) -> AHAMaskCLI:
    """Parse ``configs`` (experiment first, then fragments) and build everything with tiny parts on the CPU."""
    config_args = [a for c in configs for a in ("--config", str(c))]
    cfg = parser.parse_args(config_args)
    args = [*config_args, *tiny_parts(cfg, tmp_path, checkpoint), "--trainer.default_root_dir", str(tmp_path),
            # no CUDA here: the device is the one thing swapped; strategy, precision, callbacks stay
            "--trainer.accelerator", "cpu", "--trainer.logger", "false", *extra]
    for stage in ("train", "val", "test"):  # the data module is built, not read: any path of the task does
        if cfg.data.init_args.get(stage):
            args += [f"--data.init_args.{stage}", f"[{tmp_path / 'manifests' / stage / Path(stage_paths(cfg.data.init_args[stage])[0]).name}]"]
    return AHAMaskCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                      auto_configure_optimizers=False, run=False, args=args)


def check_built(cli: AHAMaskCLI, cfg) -> None:
    """What every built experiment must be: the right classes, the trainer's callbacks, mask-only training."""
    module, trainer = cli.model, cli.trainer
    assert type(module).__module__ + "." + type(module).__name__ == cfg.model.class_path
    assert type(cli.datamodule).__name__ == cfg.data.class_path.rsplit(".", 1)[-1]
    wanted = [c.class_path.rsplit(".", 1)[-1] for c in cfg.trainer.callbacks or []]
    built = [type(c).__name__ for c in trainer.callbacks]
    assert all(name in built for name in wanted), f"callbacks {wanted} not all in {built}"
    if cfg.model.class_path == "ahamask_lightning.module.AHAMaskModule":
        assert type(module.adapter).__name__ == cfg.model.init_args.model.class_path.rsplit(".", 1)[-1]
        assert module.adapter.num_layers * module.adapter.num_heads == module.head_mask.logits.numel()
        assert [p for p in module.parameters() if p.requires_grad] == [module.head_mask.logits]
        assert {"TemperatureAnnealing", "MaskMonitor"} <= set(built)
    else:  # pretraining: the whole TinyLALM trains
        assert sum(p.numel() for p in module.parameters() if p.requires_grad) > 0
    assert trainer.max_steps == cfg.trainer.max_steps


def _peft_too_old_for_transformers() -> str | None:
    """Granite Speech attaches its LoRA through transformers' PEFT integration, which refuses a PEFT
    older than its MIN_PEFT_VERSION (transformers 5.24 wants 0.22; the newest PEFT published may be
    older). The reason to skip, or None."""
    from importlib.metadata import version

    from packaging.version import Version

    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
    except ImportError:
        return None
    have = version("peft")
    if Version(have) < Version(MIN_PEFT_VERSION):
        return f"transformers needs peft >= {MIN_PEFT_VERSION} for Granite Speech's LoRA, peft {have} is installed"
    return None


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_every_experiment_instantiates_with_tiny_parts(parser, path, tiny_lalm_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    if "GraniteSpeechAdapter" in path.read_text() and _peft_too_old_for_transformers():
        pytest.skip(_peft_too_old_for_transformers())
    cli = instantiate(parser, [path], tmp_path, tiny_lalm_checkpoint)
    check_built(cli, parser.parse_args(["--config", str(path)]))
    assert type(cli.trainer.strategy).__name__ == "SingleDeviceStrategy"


@pytest.fixture(scope="module")
def one_per_family(parser) -> list[Path]:
    """One experiment per adapter class (and the pretraining), read with its includes resolved."""
    by_class = {}
    for p in EXPERIMENT_FILES:
        model = parser.parse_args(["--config", str(p)]).model.init_args
        by_class[model.model.class_path if "model" in model else "pretrain"] = p
    return sorted(by_class.values())


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_fragment_parses_with_every_model_family(parser, fragment, one_per_family):
    assert len(one_per_family) >= 8  # TinyLALM, SALMONN, Qwen2-Audio, four more adapters, pretraining
    for base in one_per_family:
        alone = parser.parse_args(["--config", str(base)])
        cfg = parser.parse_args(["--config", str(base), "--config", str(fragment)])
        assert cfg.model == alone.model and cfg.data == alone.data, f"{fragment.name} changed {base.name}"


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_fragment_instantiates_on_an_experiment(parser, fragment, tiny_lalm_checkpoint, tmp_path,
                                                      monkeypatch):
    from ahamask_lightning.accelerators import uses_npu

    monkeypatch.chdir(REPO)
    base = EXPERIMENTS / BASE_FOR_FRAGMENT[fragment.stem]
    cfg = parser.parse_args(["--config", str(base), "--config", str(fragment)])
    if uses_npu(cfg.trainer):  # no torch_npu here; test_npu.py builds these with a stand-in NPU
        with pytest.raises(RuntimeError) as err:
            instantiate(parser, [base, fragment], tmp_path, tiny_lalm_checkpoint)
        assert "asks for an Ascend NPU, but torch_npu is not installed" in str(err.value)
        assert "--trainer.strategy auto" in str(err.value)  # advice that works with the fragment given
        return
    devices = ["--trainer.devices", "2"] if fragment.parent.name == "strategies" else []
    cli = instantiate(parser, [base, fragment], tmp_path, tiny_lalm_checkpoint, devices)
    check_built(cli, cfg)
    strategy = type(cli.trainer.strategy).__name__
    if fragment.stem == "ddp":
        assert strategy == "MaskDDPStrategy" and cli.trainer.num_devices == 2
    elif fragment.stem == "fsdp":
        assert strategy == "MaskFSDPStrategy" and cli.trainer.num_devices == 2
        assert cli.trainer.strategy.kwargs["use_orig_params"] is True
    else:
        assert strategy == "SingleDeviceStrategy"
        assert cli.trainer.precision == cfg.trainer.precision


def _broken(tmp_path: Path, source: str, edit) -> Path:
    """``source`` broken by ``edit``: a dict of keys written after ``config: <source>`` (the way an
    experiment overrides its base), or a function that edits a fragment's own YAML."""
    if isinstance(edit, dict):
        data = {"config": str(EXPERIMENTS / source), **edit}
    else:
        data = yaml.safe_load((EXPERIMENTS / source).read_text())
        edit(data)
    out = tmp_path / "broken" / Path(source).name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


BREAKAGES = {
    "misspelled module key": ("gr_salmonn.yaml", {"model.init_args.sparsity_lamda": 0.0}),
    "unknown adapter class": ("asr_qwen2audio_base.yaml", {"model.init_args.model": {
        "class_path": "ahamask_lightning.models.Qwen2AudioAdaptor", "init_args": {"variant": "base"}}}),
    "wrong type": ("gr_tiny.yaml", {"data.init_args.batch_size": "eight"}),
    "bad callback value": ("json_qwen2audio_instruct.yaml", {"trainer.callbacks": [
        {"class_path": "ahamask_lightning.callbacks.TemperatureAnnealing", "init_args": {"preset": "papr"}},
        {"class_path": "ahamask_lightning.callbacks.MaskMonitor"}]}),
    "unknown estimator": ("gr_voxtral.yaml", {"model.init_args.estimator": "gumbel"}),
    "missing base": ("gr_tiny.yaml", {"config": str(EXPERIMENTS / "base" / "tiny_lalm_missing.yaml")}),
    "bad fsdp layer class": ("strategies/fsdp.yaml", lambda d: d["trainer"]["strategy"]["init_args"].update(
        layer_classes=["transformers.models.llama.modeling_llama.LlamaDecoderLayerX"])),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_a_broken_config_fails_these_checks(name, parser, tiny_lalm_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    source, edit = BREAKAGES[name]
    broken = _broken(tmp_path, source, edit)
    configs = [EXPERIMENTS / "aac_salmonn.yaml", broken] if source.startswith("strategies/") else [broken]
    extra = ["--trainer.devices", "2"] if source.startswith("strategies/") else []
    with pytest.raises((ValueError, TypeError, SystemExit, ArgumentError)):
        instantiate(parser, configs, tmp_path, tiny_lalm_checkpoint, extra)
    # the unbroken original passes the very same procedure
    original = [EXPERIMENTS / c for c in (["aac_salmonn.yaml", source] if source.startswith("strategies/")
                                          else [source])]
    check_built(instantiate(parser, original, tmp_path, tiny_lalm_checkpoint, extra),
                parser.parse_args([a for c in original for a in ("--config", str(c))]))


def _includes(path: Path) -> Path | None:
    """The file ``path`` names in its ``config:`` key (relative to ``path``), if any."""
    name = (yaml.safe_load(path.read_text()) or {}).get("config")
    return (path.parent / name).resolve() if name else None


# experiments/tiny_gpu/run.sh copies this one elsewhere (data paths rewritten): no relative include.
SELF_CONTAINED = {"pretrain_tiny_lalm_16x32_gpu.yaml"}


def test_every_base_is_included_and_no_experiment_is_copied():
    used = set()
    for p in EXPERIMENT_FILES:
        base = _includes(p)
        if p.name in SELF_CONTAINED:
            assert base is None, f"{p.name} must stay self-contained"
            continue
        assert base is not None and base.parent == EXPERIMENTS / "base", f"{p.name}: no config: base/<x>.yaml"
        while base is not None:
            assert base.is_file(), f"{p.name}: includes missing {base}"
            used.add(base)
            base = _includes(base)
    assert sorted(used) == [b.resolve() for b in BASES], "a base/*.yaml no experiment includes"


def test_an_experiment_overrides_its_base_key_by_key(parser):
    """gr_tiny_long.yaml -> base/tiny_lalm_long.yaml -> base/tiny_lalm.yaml: each later file wins on the
    keys it names and keeps every other key of the files below it."""
    base = yaml.safe_load((EXPERIMENTS / "base" / "tiny_lalm.yaml").read_text())
    long = parser.parse_args(["--config", str(EXPERIMENTS / "gr_tiny_long.yaml")])
    short = parser.parse_args(["--config", str(EXPERIMENTS / "gr_tiny.yaml")])
    assert short.model.init_args.lr == base["model"]["init_args"]["lr"] == 0.1
    assert long.model.init_args.lr == 0.01 and long.trainer.max_steps == 5000  # tiny_lalm_long.yaml's
    assert long.trainer.default_root_dir == "runs/tiny/gr_long"  # the experiment's own
    assert long.model.init_args.estimator == short.model.init_args.estimator == "logistic"  # kept from the base
    assert long.data.init_args.batch_size == short.data.init_args.batch_size == 16
    assert long.model.init_args.model.init_args.checkpoint == "checkpoints/tiny_lalm"
    assert short.model.init_args.model.init_args.checkpoint == "checkpoints/tiny_lalm_8x16g"


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_training_runs_log_their_learning_rate(parser, path):
    """Every experiment logs the scheduler's rate each step, except the few-step adapter smoke runs
    (base/adapter_smoke.yaml), which tests fit with ``--trainer.logger false`` -- and Lightning refuses
    a LearningRateMonitor without a logger."""
    callbacks = {c.class_path.rsplit(".", 1)[-1]: c.init_args
                 for c in parser.parse_args(["--config", str(path)]).trainer.callbacks or []}
    if _includes(path) == (EXPERIMENTS / "base" / "adapter_smoke.yaml").resolve():
        assert "LearningRateMonitor" not in callbacks
        return
    assert callbacks["LearningRateMonitor"].logging_interval == "step", path.name
