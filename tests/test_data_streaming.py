"""Rank split, shuffling, batching and resumption of ManifestDataModule on Lhotse samplers."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ahamask_lightning.data import CutLoader, ManifestDataModule


def make_corpus(root: Path, n: int, name: str = "gr", seconds=lambda i: 0.2, rate: int = 16000,
                with_duration: bool = False) -> str:
    """OUT/manifests/train/<name>.jsonl with paths relative to OUT (the generator's layout)."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    man = root / "manifests" / "train" / f"{name}.jsonl"
    man.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(man, "w") as fh:
        for i in range(n):
            rel = f"audio/{name}{i}.wav"
            sec = seconds(i)
            sf.write(root / rel, (0.1 * rng.standard_normal(int(sec * rate))).astype("float32"), rate)
            row = {"id": f"{name}{i}", "audio": rel, "task": "gr", "text": "Male" if i % 2 else "Female"}
            if with_duration:
                row["duration"] = sec
            fh.write(json.dumps(row) + "\n")
    return str(man)


def ids_of(batches) -> list[str]:
    return [s["id"] for b in batches for s in b]


def test_every_sample_once_across_ranks_and_workers(tmp_path: Path) -> None:
    shards = [make_corpus(tmp_path, 23, "gr"), make_corpus(tmp_path, 6, "asr")]
    everything = Counter([f"gr{i}" for i in range(23)] + [f"asr{i}" for i in range(6)])
    for epoch in range(2):
        seen: list[str] = []
        for rank in range(2):
            dm = ManifestDataModule(train=shards, batch_size=3, num_workers=2, rank=rank, world_size=2,
                                    known_tasks={"gr"}, shuffle_buffer=4, seed=1)
            dm.setup("fit")
            loader = dm.train_dataloader()
            loader.sampler.set_epoch(epoch)  # what Lightning does at every epoch start
            seen += ids_of(loader)
        assert Counter(seen) == everything


def test_limit_keeps_the_first_lines_of_each_manifest(tmp_path: Path) -> None:
    man = make_corpus(tmp_path, 10)
    dm = ManifestDataModule(val=man, limit=4, known_tasks={"gr"})
    assert ids_of(dm.val_dataloader()[0]) == ["gr0", "gr1", "gr2", "gr3"]


def test_shuffle_depends_on_epoch_and_is_deterministic(tmp_path: Path) -> None:
    man = make_corpus(tmp_path, 20)

    def epochs(seed: int) -> list[list[str]]:
        dm = ManifestDataModule(train=man, batch_size=4, shuffle_buffer=8, seed=seed, known_tasks={"gr"})
        loader = dm.train_dataloader()
        return [ids_of(loader) for _ in range(2)]  # own epoch counter advances on exhaustion

    a, b = epochs(0), epochs(0)
    assert a == b
    assert a[0] != a[1] and sorted(a[0]) == sorted(a[1])
    assert epochs(5)[0] != a[0]


def test_eval_order_is_manifest_order_one_loader_per_manifest(tmp_path: Path) -> None:
    m1 = make_corpus(tmp_path, 5, "gr")
    m2 = make_corpus(tmp_path, 3, "ser")
    dm = ManifestDataModule(val=[m1, m2], batch_size=2, known_tasks={"gr"})
    loaders = dm.val_dataloader()
    assert len(loaders) == 2 and dm.eval_names["val"] == ["gr", "ser"]
    assert ids_of(loaders[0]) == [f"gr{i}" for i in range(5)]
    assert ids_of(loaders[1]) == [f"ser{i}" for i in range(3)]


@pytest.mark.parametrize("with_duration", [True, False])
def test_batches_by_seconds_respect_budget(tmp_path: Path, with_duration: bool) -> None:
    lengths = [0.5, 1.5, 3.0, 2.2, 1.0, 4.0, 0.3, 2.9, 1.2, 3.5, 0.8, 2.0]
    man = make_corpus(tmp_path, len(lengths), seconds=lambda i: lengths[i], rate=8000,
                      with_duration=with_duration)
    dm = ManifestDataModule(train=man, max_batch_seconds=6.0, known_tasks={"gr"}, shuffle_buffer=3)
    batches = list(dm.train_dataloader())
    assert sorted(ids_of(batches)) == sorted(f"gr{i}" for i in range(len(lengths)))
    for b in batches:
        longest = max(s["audio"].numel() for s in b) / 16000
        assert len(b) * longest <= 6.0 + 1e-3
    assert any(len(b) > 1 for b in batches)


def _train_dm(man: str, **kw) -> ManifestDataModule:
    return ManifestDataModule(train=man, known_tasks={"gr"}, shuffle_buffer=5, seed=3, **kw)


def _train_loader(man: str, **kw) -> CutLoader:
    return _train_dm(man, **kw).train_dataloader()


def _consume(dm: ManifestDataModule, it, n: int) -> list[str]:
    """Takes ``n`` batches the way Lightning's training loop does: each through the hook."""
    ids = []
    for _ in range(n):
        ids += [s["id"] for s in dm.on_before_batch_transfer(next(it), 0)]
    return ids


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_skips_exactly_what_was_consumed(tmp_path: Path, workers: int) -> None:
    man = make_corpus(tmp_path, 30)
    full = ids_of(_train_loader(man, batch_size=4, num_workers=workers))
    dm = _train_dm(man, batch_size=4, num_workers=workers)
    it = iter(dm.train_dataloader())
    before = _consume(dm, it, 3)
    state = dm.state_dict()
    del it
    again = _train_dm(man, batch_size=4, num_workers=workers)
    again.load_state_dict(json.loads(json.dumps(state)))  # survives a round trip through plain data
    resumed = again.train_dataloader()
    after = ids_of(resumed)
    assert Counter(before + after) == Counter(full) and len(before + after) == 30
    assert state["train"]["epoch"] == 0 and state["train"]["batches"] == {"0": 3}
    # The next epoch after the resumed one is a full, fresh epoch.
    assert sorted(ids_of(resumed)) == sorted(full)


def test_state_rolls_back_batches_still_prefetched(tmp_path: Path) -> None:
    man = make_corpus(tmp_path, 12)
    dm = _train_dm(man, batch_size=2)
    it = iter(dm.train_dataloader())
    consumed = _consume(dm, it, 1)
    next(it)  # fetched ahead (like Lightning's prefetcher) but never trained on: never through the hook
    again = _train_dm(man, batch_size=2)
    again.load_state_dict(dm.state_dict())
    assert Counter(consumed + ids_of(again.train_dataloader())) == Counter(f"gr{i}" for i in range(12))


class Crash(Exception):
    pass


def test_resume_through_lightning_checkpoint(tmp_path: Path) -> None:
    import lightning.pytorch as pl

    man = make_corpus(tmp_path, 16)

    class Recorder(pl.LightningModule):
        def __init__(self, crash_at: int = -1) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[str] = []
            self.crash_at = crash_at

        def training_step(self, batch, batch_idx):
            if self.global_step == self.crash_at:
                raise Crash  # simulated kill after the step-3 checkpoint
            self.seen += [s["id"] for s in batch]
            return (self.w - 1).pow(2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def trainer(**kw) -> pl.Trainer:
        return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=tmp_path, max_epochs=2, **kw)

    def dm() -> ManifestDataModule:
        return ManifestDataModule(train=man, batch_size=2, known_tasks={"gr"}, shuffle_buffer=4, seed=7)

    every3 = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1)
    first = Recorder(crash_at=4)
    with pytest.raises(Crash):
        trainer(callbacks=[every3]).fit(first, datamodule=dm())
    ckpt = tmp_path / "ck" / "epoch=0-step=3.ckpt"
    assert ckpt.exists() and len(first.seen) == 8  # steps 0-3 ran; the checkpoint holds 3 of them
    second = Recorder()
    trainer(enable_checkpointing=False).fit(second, datamodule=dm(), ckpt_path=ckpt)
    epoch0 = first.seen[:6] + second.seen[:10]
    assert Counter(epoch0) == Counter(f"gr{i}" for i in range(16))
    assert sorted(second.seen[10:]) == sorted(f"gr{i}" for i in range(16))  # epoch 1 is whole


@pytest.mark.parametrize("step", [8, 11])  # the last batch of epoch 0; the middle of epoch 1
def test_a_resume_continues_the_uninterrupted_order_in_any_epoch(tmp_path: Path, step: int) -> None:
    """Lightning fetches the first batch before it sets the sampler's epoch: a resume in epoch 1
    used to replay epoch 0's order, and one from an epoch's last batch to skip a whole epoch."""
    import lightning.pytorch as pl

    man = make_corpus(tmp_path, 16)

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[str] = []

        def training_step(self, batch, batch_idx):
            self.seen += [s["id"] for s in batch]
            return (self.w - 1).pow(2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(module: Recorder, ckpt_path: Path | None = None, **kw) -> None:
        pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=tmp_path, max_epochs=3, **kw).fit(
            module, datamodule=ManifestDataModule(train=man, batch_size=2, known_tasks={"gr"}, shuffle_buffer=4,
                                                  seed=7), ckpt_path=ckpt_path)

    every = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_top_k=-1)
    whole = Recorder()
    fit(whole, callbacks=[every])
    assert len(whole.seen) == 48 and whole.seen[:16] != whole.seen[16:32]  # 3 epochs of 8 batches, reshuffled
    resumed = Recorder()
    fit(resumed, enable_checkpointing=False, ckpt_path=next((tmp_path / "ck").glob(f"*-step={step}.ckpt")))
    assert resumed.seen == whole.seen[2 * step:]


def test_resume_with_other_worker_count_continues_exactly(tmp_path: Path) -> None:
    # the sampler plans batches in the main process: the worker count does not change the plan
    man = make_corpus(tmp_path, 8)
    dm = _train_dm(man, batch_size=2)
    consumed = _consume(dm, iter(dm.train_dataloader()), 1)
    other = _train_dm(man, batch_size=2, num_workers=1)
    other.load_state_dict(dm.state_dict())
    assert Counter(consumed + ids_of(other.train_dataloader())) == Counter(f"gr{i}" for i in range(8))


def test_resume_with_other_world_size_restarts_the_epoch(tmp_path: Path) -> None:
    man = make_corpus(tmp_path, 8)
    dm = _train_dm(man, batch_size=2)
    _consume(dm, iter(dm.train_dataloader()), 1)
    other = _train_dm(man, batch_size=2, rank=0, world_size=2)
    with pytest.warns(UserWarning, match="cannot resume"):
        other.load_state_dict(dm.state_dict())
    assert len(ids_of(other.train_dataloader())) == 4  # rank 0's half of the whole epoch


def test_predict_through_lightning(tmp_path: Path) -> None:
    import lightning.pytorch as pl

    m1, m2 = make_corpus(tmp_path, 5, "gr"), make_corpus(tmp_path, 3, "ser")

    class Ids(pl.LightningModule):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return [s["id"] for s in batch]

    dm = ManifestDataModule(predict=[m1, m2], batch_size=2, known_tasks={"gr"})
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    out = trainer.predict(Ids(), datamodule=dm)
    assert out == [[["gr0", "gr1"], ["gr2", "gr3"], ["gr4"]], [["ser0", "ser1"], ["ser2"]]]


def _ddp_worker(rank: int, man: str, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        dm = ManifestDataModule(train=man, batch_size=1, known_tasks={"gr"}, rank=rank, world_size=2)
        ids = [s["id"] for batch in dm.train_dataloader() for s in dm.on_before_batch_transfer(batch, 0)]
        Path(f"{out}.{rank}").write_text(json.dumps({"ids": ids, "state": dm.state_dict()}))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_stop_together_on_uneven_data(tmp_path: Path) -> None:
    man = make_corpus(tmp_path, 5)  # 3 batches of one for rank 0, 2 for rank 1
    out = str(tmp_path / "ddp")
    # fork: the children need not re-import torch and lightning (seconds each on a small machine)
    torch.multiprocessing.start_processes(_ddp_worker, args=(man, f"file://{tmp_path}/pg", out), nprocs=2,
                                          start_method="fork")
    got = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    assert [len(g["ids"]) for g in got] == [2, 2]  # rank 0's third batch waits for the next epoch
    assert set(got[0]["ids"]).isdisjoint(got[1]["ids"])
    assert got[0]["state"]["train"]["batches"] == {"0": 2, "1": 2}  # state gathered from both ranks


def test_loader_requires_valid_coordinates(tmp_path: Path) -> None:
    man = make_corpus(tmp_path, 2)
    with pytest.raises(ValueError):
        ManifestDataModule(train=man, known_tasks={"gr"}, rank=2, world_size=2).train_dataloader()


def _instructions(loader) -> dict[str, str | None]:
    return {i: ins for batch in loader for i, ins in zip(batch["ids"], batch["instructions"])}


def test_instruction_draws_follow_sample_and_epoch_not_workers(tmp_path: Path) -> None:
    """``prompt: random`` draws each sample's instruction from (seed, epoch, id): the same with 0 or 2
    workers (each worker used to restart its own stream every epoch), new the next epoch."""
    from ahamask_lightning.data.collate import SampleCollate
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm

    man = make_corpus(tmp_path, 12)
    collate = SampleCollate(random_tiny_lalm(), "random", seed=0)
    drawn = {}
    for workers in (0, 2):
        dm = ManifestDataModule(train=man, batch_size=3, num_workers=workers, known_tasks={"gr"}, seed=1,
                                collate_fn=collate)
        dm.setup("fit")
        loader = dm.train_dataloader()
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            drawn[workers, epoch] = _instructions(loader)
    assert len(drawn[0, 0]) == 12 and drawn[0, 0] == drawn[2, 0] and drawn[0, 1] == drawn[2, 1]
    assert drawn[0, 0] != drawn[0, 1] and len(set(drawn[0, 0].values())) > 1


def test_dropped_instructions_are_for_training_only(tmp_path: Path) -> None:
    from ahamask_lightning.data.collate import SampleCollate
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm

    man = make_corpus(tmp_path, 6)
    collate = SampleCollate(random_tiny_lalm(), "task", 0, instruction_free={"gr": 1.0})
    dm = ManifestDataModule(train=man, val=man, batch_size=3, known_tasks={"gr"}, collate_fn=collate)
    dm.setup("fit")
    assert set(_instructions(dm.train_dataloader()).values()) == {None}
    assert None not in _instructions(dm.val_dataloader()[0]).values()
