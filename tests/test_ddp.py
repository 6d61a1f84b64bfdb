"""Two DDP processes on the CPU (gloo) train one mask: identical masks, disjoint data shards.

``ahamask fit`` runs as a user would type it -- the tiny Qwen2-Audio experiment plus the cpu and
ddp fragments, two devices -- and a test-only callback (tests/ddp_helpers.py) dumps what each rank
saw and holds at the end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AHAMASK = str(Path(sys.executable).with_name("ahamask"))


def fit_two_ranks(manifests: Path, train: str, tmp_path: Path, dump_args: dict, steps: int = 3,
                  extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``ahamask fit`` of the tiny Qwen2-Audio GR experiment on two gloo ranks, ``steps`` steps, with
    ``ddp_helpers.RankMaskDump(**dump_args)`` writing what each rank saw."""
    callback = json.dumps({"class_path": "ddp_helpers.RankMaskDump", "init_args": dump_args})
    args = ["fit", "--config", "experiments/gr_qwen2audio_tiny.yaml", "--config", "experiments/accelerators/cpu.yaml",
            "--config", "experiments/strategies/ddp.yaml", "--trainer.devices", "2", "--trainer.max_steps", str(steps),
            "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--data.init_args.train", f"[{train}]",
            *[a for s in ("val", "test") for a in (f"--data.init_args.{s}", f"[{manifests}/{s}/gr.jsonl]")],
            f"--trainer.callbacks+={callback}", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([AHAMASK, *args], check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("train_as", ["jsonl", "shar"])
def test_two_ranks_train_one_mask(train_as, synth_corpus, tmp_path):
    """``shar``: the training manifest as Lhotse Shar shards, which the two ranks split between them
    (each reads only its own shards; the ranks stop together when the first runs out)."""
    m = synth_corpus / "manifests"
    dump = tmp_path / "dump"
    train = f"{m}/train/gr.jsonl"
    if train_as == "shar":
        train = str(tmp_path / "shar")
        proc = subprocess.run([AHAMASK, "data", "shar", f"{m}/train/gr.jsonl", "--out", train, "--shard-size", "8"],
                              check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        shards = int(proc.stdout.split(f"-> {train} (")[1].split(" shards")[0])
        assert shards >= 2  # enough for a shard each: the ranks read disjoint shards
    proc = fit_two_ranks(m, train, tmp_path, {"out_dir": str(dump), "perturb_rank1": True})
    if proc.returncode and "Connection closed by peer" in proc.stderr and (dump / "rank1.json").is_file():
        raise AssertionError("training finished on both ranks, then a collective ran on rank 0 alone: "
                             "MaskMonitor.on_fit_end reads trainer.log_dir (a broadcast) after its "
                             "is_global_zero return; read it on every rank first")
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert {r["strategy"] for r in ranks} == {"MaskDDPStrategy"} and {r["backend"] for r in ranks} == {"gloo"}
    assert {r["steps"] for r in ranks} == {3}
    # one mask: rank 1's changed logits were replaced by rank 0's at set-up, the updates were all-reduced
    assert ranks[0]["before"] == ranks[1]["before"]
    assert ranks[0]["after"] == ranks[1]["after"]
    assert ranks[0]["after"] != ranks[0]["before"]
    # one mask sample per step for the whole global batch, as on one device with batch_size x 2:
    # the ranks start from one seed and draw the mask noise in step
    assert ranks[0]["rng_states"] == ranks[1]["rng_states"] and len(set(ranks[0]["rng_states"])) == 3
    # disjoint shards of the manifest
    ids0, ids1 = set(ranks[0]["ids"]), set(ranks[1]["ids"])
    assert len(ids0) == len(ranks[0]["ids"]) == 6 and len(ids1) == 6 and not ids0 & ids1
    # the frozen model was not broadcast (MaskDDPStrategy): rank 1's changed weight is still its own
    assert ranks[1]["frozen_checksum"] - ranks[0]["frozen_checksum"] > 0.5


def test_a_nan_loss_on_one_rank_is_skipped_by_both(synth_corpus, tmp_path):
    """Step 1's loss is NaN on rank 1 only: both ranks skip that step (a rank running backward alone
    would wait in the gradient all-reduce, or pair it with the other's next step), count it, and
    end with one mask."""
    m = synth_corpus / "manifests"
    dump = tmp_path / "dump"
    try:
        proc = fit_two_ranks(m, f"{m}/train/gr.jsonl", tmp_path, {"out_dir": str(dump), "nan_on_rank1_at_step": 1})
    except subprocess.TimeoutExpired:
        raise AssertionError("the two ranks hung: rank 0 ran backward while rank 1 skipped the step") from None
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["nonfinite_total"] for r in ranks] == [1, 1]
    assert ranks[0]["after"] == ranks[1]["after"] != ranks[0]["before"]


def test_a_resumed_ddp_fit_trains_the_uninterrupted_mask(synth_corpus, tmp_path):
    """Two ranks, 6 steps straight (A) against 4 steps, then a resume from the last checkpoint to 6
    (B): each rank sees the same samples in the same order and both end with A's mask to the bit
    (the ranks' data positions and the mask noise's RNG are restored per rank)."""
    m = synth_corpus / "manifests"
    train = f"{m}/train/gr.jsonl"
    every = json.dumps({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"every_n_train_steps": 2, "save_last": True}})
    common = ("--model.init_args.total_steps", "6", f"--trainer.callbacks+={every}")
    a = fit_two_ranks(m, train, tmp_path / "A", {"out_dir": str(tmp_path / "dumpA")}, steps=6, extra=common)
    assert a.returncode == 0, a.stderr[-4000:]
    b1 = fit_two_ranks(m, train, tmp_path / "B", {"out_dir": str(tmp_path / "dumpB1")}, steps=4, extra=common)
    assert b1.returncode == 0, b1.stderr[-4000:]
    b2 = fit_two_ranks(m, train, tmp_path / "B", {"out_dir": str(tmp_path / "dumpB2")}, steps=6,
                       extra=(*common, "--ckpt_path", "last"))
    assert b2.returncode == 0, b2.stderr[-4000:]
    for rank in (0, 1):
        whole, first, rest = (json.loads((tmp_path / d / f"rank{rank}.json").read_text())
                              for d in ("dumpA", "dumpB1", "dumpB2"))
        assert first["steps"] == 4 and rest["steps"] == whole["steps"] == 6
        assert first["ids"] + rest["ids"] == whole["ids"], f"rank {rank} saw other samples after the resume"
        # the generator after each resumed step's draw is the uninterrupted run's (the first resumed
        # record is taken before RNGStateCheckpoint, which runs after the YAML's callbacks, restores it)
        assert first["rng_states"] + rest["rng_states"][1:] == whole["rng_states"][:4] + whole["rng_states"][5:]
        assert rest["after"] == whole["after"] != whole["before"]


def run_two_ranks(subcommand: str, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [AHAMASK, subcommand, "--config", "experiments/gr_qwen2audio_tiny.yaml", "--config",
           "experiments/accelerators/cpu.yaml", "--config", "experiments/strategies/ddp.yaml", "--trainer.devices", "2",
           "--trainer.logger", "false", *args]
    return subprocess.run(cmd, check=False, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)


def test_two_ranks_test_and_predict_every_sample_once(synth_corpus, tmp_path):
    """Five test samples in batches of 2 on two ranks: the last round has one cut, which Lhotse
    repeats (``_dup0``) so that both ranks get a batch. Each sample is scored and written once:
    ``predictions.jsonl`` holds both ranks' predictions, and the metric is the one its lines give."""
    from ahamask_lightning.tasks import get_task

    rows = [json.loads(line) for line in (synth_corpus / "manifests" / "test" / "gr.jsonl").read_text().splitlines()]
    manifest = tmp_path / "five.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))
    ids = sorted(r["id"] for r in rows[:5])
    data = ["--data.init_args.batch_size", "2", "--data.init_args.audio_root", str(synth_corpus),
            "--data.init_args.test", f"[{manifest}]",
            "--data.init_args.predict", f"[{manifest}]", "--model.init_args.prompt", "task",
            "--model.init_args.use_mask", "false"]
    proc = run_two_ranks("test", [*data, "--model.init_args.results_dir", str(tmp_path / "test")])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "test" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ids
    metric = get_task("gr").metric()
    metric.update([r["prediction"] for r in rows], [r["reference"] for r in rows])
    written = json.loads((tmp_path / "test" / "test_metrics.json").read_text())["metrics"]
    assert written["test/gr/acc"] == pytest.approx(float(metric.compute()["acc"]))
    proc = run_two_ranks("predict", [*data, "--model.init_args.results_dir", str(tmp_path / "predict")])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "predict" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ids and "predict: 5 predictions written to " in proc.stdout


FSDP_ADAPTERS = {
    "qwen2-audio": ("Qwen2AudioAdapter", {"tiny": True}),
    "qwen2.5-omni": ("Qwen2_5OmniAdapter", {"tiny": True}),
    "granite-speech": ("GraniteSpeechAdapter", {"tiny": True}),
    "voxtral": ("VoxtralAdapter", {"tiny": True}),
    "audio-flamingo-3": ("AudioFlamingo3Adapter", {"tiny": True}),
    "salmonn": ("SalmonnAdapter", {"tiny": True}),
    "tiny-lalm": ("TinyLALM", {"checkpoint": str(REPO / "checkpoints" / "tiny_lalm")}),
}


@pytest.mark.parametrize("name", FSDP_ADAPTERS)
def test_fsdp_policy_shards_every_decoder_layer_and_keeps_the_mask_whole(name):
    """With fsdp.yaml's default layer classes, every adapter's LLM layers are each a sharded unit
    (none left in one whole-model unit) and the mask is an un-sharded one. FSDP needs an
    accelerator (torch refuses CPU), so the wrapping decision itself is checked here."""
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import CustomPolicy

    from ahamask_lightning import models
    from ahamask_lightning.accelerators import check_wraps_layers, mask_wrap_policy, mask_wrap_rule
    from ahamask_lightning.module import AHAMaskModule

    adapter_class, kwargs = FSDP_ADAPTERS[name]
    module = AHAMaskModule(getattr(models, adapter_class)(**kwargs))
    assert isinstance(mask_wrap_policy(), CustomPolicy)
    rule = mask_wrap_rule()
    units = {m: unit for m in module.modules() if (unit := rule(m))}
    layers = [m for m in units if m is not module.head_mask]
    assert len(layers) == module.adapter.num_layers == check_wraps_layers(module)
    assert len({type(m) for m in layers}) == 1 and type(layers[0]).__name__.endswith("DecoderLayer")
    assert units[module.head_mask]["sharding_strategy"] == ShardingStrategy.NO_SHARD


def test_fsdp_refuses_a_model_none_of_whose_layers_it_would_shard():
    from ahamask_lightning.accelerators import check_wraps_layers
    from ahamask_lightning.models import Qwen2AudioAdapter

    with pytest.raises(ValueError, match=r"no module of the model is one of \['LlamaDecoderLayer'\]; "
                                         r"its layer classes: \[.*'Qwen2DecoderLayer'"):
        check_wraps_layers(Qwen2AudioAdapter(tiny=True), ["transformers.models.llama.modeling_llama.LlamaDecoderLayer"])


def test_a_layer_class_that_does_not_import_is_named():
    """A typo in ``layer_classes`` stops in one line instead of leaving those layers unsharded."""
    from ahamask_lightning.accelerators import mask_wrap_rule

    with pytest.raises(ValueError, match="cannot import transformers.models.lama.modeling_llama"):
        mask_wrap_rule(["transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer",
                        "transformers.models.lama.modeling_llama.LlamaDecoderLayer"])
    with pytest.raises(ValueError, match="has no class LlamaDecoderLayr"):
        mask_wrap_rule(["transformers.models.llama.modeling_llama.LlamaDecoderLayr"])
