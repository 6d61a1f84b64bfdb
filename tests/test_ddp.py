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
    callback = json.dumps({"class_path": "ddp_helpers.RankMaskDump",
                           "init_args": {"out_dir": str(dump), "perturb_rank1": True}})
    args = ["fit", "--config", "experiments/gr_qwen2audio_tiny.yaml", "--config", "experiments/accelerators/cpu.yaml",
            "--config", "experiments/strategies/ddp.yaml", "--trainer.devices", "2", "--trainer.max_steps", "3",
            "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--data.init_args.train", f"[{train}]",
            *[a for s in ("val", "test") for a in (f"--data.init_args.{s}", f"[{m}/{s}/gr.jsonl]")],
            f"--trainer.callbacks+={callback}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([AHAMASK, *args], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
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
    # disjoint shards of the manifest
    ids0, ids1 = set(ranks[0]["ids"]), set(ranks[1]["ids"])
    assert len(ids0) == len(ranks[0]["ids"]) == 6 and len(ids1) == 6 and not ids0 & ids1
    # the frozen model was not broadcast (MaskDDPStrategy): rank 1's changed weight is still its own
    assert ranks[1]["frozen_checksum"] - ranks[0]["frozen_checksum"] > 0.5


def test_fsdp_policy_shards_decoder_layers_and_keeps_the_mask_whole():
    # FSDP needs an accelerator (torch refuses CPU), so the wrapping decision itself is checked here.
    from torch.distributed.fsdp import ShardingStrategy

    from ahamask_lightning.accelerators import mask_wrap_policy
    from ahamask_lightning.models import Qwen2AudioAdapter
    from ahamask_lightning.module import AHAMaskModule

    module = AHAMaskModule(Qwen2AudioAdapter(tiny=True))
    units = mask_wrap_policy()._run_policy(module, set(), {"sharding_strategy": ShardingStrategy.FULL_SHARD})
    kinds = sorted(type(m).__name__ for m in units)
    assert kinds == ["HeadMask", "Qwen2DecoderLayer", "Qwen2DecoderLayer"]
    assert units[module.head_mask]["sharding_strategy"] == ShardingStrategy.NO_SHARD
