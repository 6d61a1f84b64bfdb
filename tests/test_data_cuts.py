"""Lhotse cut manifests, the samplers behind the loaders, and the consumed-batch position under Lightning."""
from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler

from ahamask_lightning.data import ManifestDataModule, is_cut_manifest, read_reject_files


def write_corpus(root: Path) -> tuple[str, list[MonoCut]]:
    """Eight samples: plain clips at two rates, a segment of a longer file, a pair, instructions and
    meta; returns the user JSONL manifest and the same samples as cuts, built the way a corpus
    preparer builds them (``Recording.from_file``, the convention of ``data/cuts.py``)."""
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, cuts = [], []
    for i in range(8):
        rate = 16000 if i % 2 else 8000
        path = root / "audio" / f"c{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(rate * (0.6 + 0.3 * i)))).astype("float32"), rate)
        row = {"id": f"c{i}", "audio": f"audio/c{i}.wav", "task": "gr", "text": ["Male", "Female"][i % 2],
               "meta": {"speaker": f"s{i % 3}"}}
        if i == 3:
            row["instruction"] = "Is the speaker male or female?"
        if i == 5:
            row["meta"] |= {"start": 0.25, "end": 1.5}
        if i == 6:
            row["audio"] = ["audio/c6.wav", "audio/c1.wav"]
        rows.append(row)
        rec = Recording.from_file(str(path), recording_id=f"c{i}")
        start, duration = (0.25, 1.25) if i == 5 else (0.0, rec.duration)
        custom = {"task": "gr", "meta": row["meta"]}
        if "instruction" in row:
            custom["instruction"] = row["instruction"]
        if i == 6:
            custom |= {"audio_b": Recording.from_file(str(root / "audio" / "c1.wav"), recording_id="c1b"),
                       "audio_b_unaligned": True}
        text = SupervisionSegment(id=f"c{i}", recording_id=rec.id, start=0.0, duration=duration, text=row["text"],
                                  speaker=row["meta"]["speaker"])
        cuts.append(MonoCut(id=f"c{i}", start=start, duration=duration, channel=0, recording=rec,
                            supervisions=[text], custom=custom))
    man = root / "train.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(man), cuts


def samples_of(loader) -> list[list[dict]]:
    return [list(batch) for batch in loader]


@pytest.mark.parametrize("name", ["train.cuts.jsonl.gz", "plain.jsonl"])  # by name, and by content
def test_a_cut_manifest_gives_the_same_batches_as_the_jsonl_manifest(tmp_path: Path, name: str) -> None:
    jsonl, cuts = write_corpus(tmp_path)
    CutSet.from_cuts(cuts).to_file(tmp_path / name)
    cut_manifest = str(tmp_path / name)
    assert is_cut_manifest(cut_manifest) and not is_cut_manifest(jsonl)
    def loaders(manifest: str, options: dict):
        dm = ManifestDataModule(train=manifest, val=manifest, known_tasks={"gr"}, min_seconds=0.5, seed=2,
                                shuffle_buffer=4, **options)
        return dm.train_dataloader(), dm.val_dataloader()[0]

    for options in ({"batch_size": 3}, {"max_batch_seconds": 4.0}):
        for from_jsonl, from_cuts in zip(loaders(jsonl, options), loaders(cut_manifest, options)):
            a, b = samples_of(from_jsonl), samples_of(from_cuts)
            assert [[s["id"] for s in x] for x in a] == [[s["id"] for s in x] for x in b]
            assert sorted(s["id"] for x in a for s in x) == [f"c{i}" for i in range(8)]
            for sa, sb in zip((s for x in a for s in x), (s for x in b for s in x)):
                assert torch.equal(sa["audio"], sb["audio"]), sa["id"]
                assert {k: sa[k] for k in ("task", "text", "instruction", "meta")} == \
                       {k: sb[k] for k in ("task", "text", "instruction", "meta")}
    pair = next(s for x in a for s in x if s["id"] == "c6")  # A + 0.1 s + the whole of B, at 16 kHz
    frames = {i: sf.info(tmp_path / "audio" / f"c{i}.wav").frames for i in (1, 6)}  # c6 at 8 kHz, c1 at 16 kHz
    assert pair["audio"].numel() == 2 * frames[6] + 1600 + frames[1]
    segment = next(s for x in a for s in x if s["id"] == "c5")
    assert segment["audio"].numel() == 20000


def test_bad_lines_of_a_cut_manifest_are_rejected_with_their_reason(tmp_path: Path) -> None:
    _, cuts = write_corpus(tmp_path / "corpus")
    manifest = tmp_path / "corpus" / "mixed.cuts.jsonl"
    CutSet.from_cuts(cuts[:2]).to_file(manifest)
    good = manifest.read_text().splitlines()[0]
    bad = {
        "karaoke": json.loads(good) | {"id": "karaoke", "custom": {"task": "karaoke"}},
        "silent": json.loads(good.replace('"Male"', '" "').replace('"Female"', '" "')) | {"id": "silent"},
        "gone": json.loads(good.replace("c0.wav", "gone.wav")) | {"id": "gone"},
        "escape": json.loads(good.replace(str(tmp_path / "corpus"), str(tmp_path))) | {"id": "escape"},
        "refs": json.loads(good) | {"id": "refs", "custom": {"task": "gr", "meta": {"references": "Male"}}},
        "past": json.loads(good) | {"id": "past", "start": 0.2, "duration": 1.0},  # c0 is 0.6 s long
    }
    lines = [good, "{not json", *(json.dumps(obj) for obj in bad.values())]
    manifest.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "run" / "rejects.jsonl"
    dm = ManifestDataModule(val=str(manifest), known_tasks={"gr"}, min_seconds=0.5, rejects_path=str(rejects))
    assert [s["id"] for b in dm.val_dataloader()[0] for s in b] == ["c0"]
    assert read_reject_files(str(rejects)) == {(str(manifest), 2): "malformed_json", (str(manifest), 3): "unknown_task",
                                               (str(manifest), 4): "empty_target", (str(manifest), 5): "missing_file",
                                               (str(manifest), 6): "path_outside_root",
                                               (str(manifest), 7): "bad_references",
                                               (str(manifest), 8): "bad_segment"}


def test_the_training_batches_come_from_a_lhotse_sampler(tmp_path: Path) -> None:
    jsonl, _ = write_corpus(tmp_path)
    dm = ManifestDataModule(train=jsonl, known_tasks={"gr"}, min_seconds=0.5, batch_size=3, shuffle_buffer=4)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, SimpleCutSampler)
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        plan = [[cut.id for cut in cuts] for cuts in loader.sampler]
        loader.sampler.set_epoch(epoch)
        assert [[s["id"] for s in b] for b in loader] == plan
    assert plan != [[s["id"] for s in b] for b in dm.train_dataloader()]  # epoch 1 is reshuffled
    bucketed = ManifestDataModule(train=jsonl, known_tasks={"gr"}, max_batch_seconds=3.0).train_dataloader()
    assert isinstance(bucketed.sampler, DynamicBucketingSampler)


class Crash(Exception):
    pass


class Recorder(pl.LightningModule):
    """Records the ids of every training step, and what the datamodule and the collate had seen by then."""

    def __init__(self, crash_at: int = -1) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []
        self.probes: list[tuple[int, dict]] = []
        self.crash_at = crash_at

    def training_step(self, batch, batch_idx):
        if self.global_step == self.crash_at:
            raise Crash  # a kill after the last checkpoint
        self.seen.append([s["id"] for s in batch])
        dm = self.trainer.datamodule
        self.probes.append((dm.collate_fn.calls, dm.state_dict()))
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class CountingCollate:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, samples: list[dict]) -> list[dict]:
        self.calls += 1
        return samples


def _fit(tmp_path: Path, manifest: str, module: Recorder, ckpt_path: str | None = None, **kw) -> None:
    dm = ManifestDataModule(train=manifest, known_tasks={"gr"}, min_seconds=0.5, batch_size=1, shuffle_buffer=1,
                            collate_fn=CountingCollate())
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, max_epochs=1, **kw)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)


def test_lightning_fetches_a_batch_ahead_and_the_position_counts_only_consumed_ones(tmp_path: Path) -> None:
    """Lightning's prefetcher loads one batch beyond the step being trained (so a loader's own count
    is one ahead); the position saved is the consumed one. A batch whose only sample has NaN audio
    is dropped without a step and still counts in the sampler's plan."""
    jsonl, _ = write_corpus(tmp_path / "corpus")
    nan = np.full(8000, np.nan, dtype="float32")
    sf.write(tmp_path / "corpus" / "audio" / "c2.wav", nan, 8000, subtype="FLOAT")  # header fine, samples not
    module = Recorder()
    _fit(tmp_path / "a", jsonl, module)
    assert module.seen == [["c0"], ["c1"], ["c3"], ["c4"], ["c5"], ["c6"], ["c7"]]
    calls = [c for c, _ in module.probes]
    positions = [state["train"]["batches"]["0"] for _, state in module.probes]
    assert calls[:2] == [2, 3]  # while step 0 trains, batch 1 is loaded already
    assert positions == [1, 2, 4, 5, 6, 7, 8]  # plan index 2 (c2, all bad) never reached a step

    every3 = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1)
    first = Recorder(crash_at=4)
    with pytest.raises(Crash):
        _fit(tmp_path / "b", jsonl, first, callbacks=[every3])
    saved = torch.load(tmp_path / "ck" / "epoch=0-step=3.ckpt", weights_only=True)["ManifestDataModule"]["train"]
    assert saved.pop("plan")["batch_size"] == 1  # what the plan depends on (a resume checks it)
    assert saved == {"epoch": 0, "batches": {"0": 4}, "world_size": 1}  # c0, c1, (c2), c3
    second = Recorder()
    _fit(tmp_path / "c", jsonl, second, ckpt_path=str(tmp_path / "ck" / "epoch=0-step=3.ckpt"))
    assert first.seen[:3] + second.seen == module.seen


def test_a_prepared_corpus_streams_through_the_datamodule(tmp_path: Path) -> None:
    """``ahamask data prepare`` output (``<split>/<task>.cuts.jsonl.gz``, absolute paths into the raw
    corpus, which its corpus.json records) is read as it is: every cut, no rejects."""
    from corpus_helpers import fake_librispeech

    from data_modules.prepare import prepare

    fake_librispeech(tmp_path / "LibriSpeech")
    out = tmp_path / "out"
    prepare("librispeech", tmp_path, out)
    for task in ("asr", "gr"):
        manifest = out / "manifests" / "dev-clean" / f"{task}.cuts.jsonl.gz"
        expected = {cut.id: cut.supervisions[0].text for cut in CutSet.from_file(manifest)}
        dm = ManifestDataModule(val=str(manifest), batch_size=2, min_seconds=0.1, num_workers=1)
        dm.setup("validate")
        got = {s["id"]: s["text"] for b in dm.val_dataloader()[0] for s in b}
        assert got == expected and len(got) == 3
        assert dm.reject_summary() == {} and dm.eval_names["val"] == [task]
