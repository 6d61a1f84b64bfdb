"""Lhotse Shar shards: ``ahamask data shar`` writes the checked cuts with their audio, and a Shar
directory is a manifest the data module reads like any other (real WAVs, real tar shards)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from lhotse import CutSet
from test_data_cuts import samples_of, write_corpus

from ahamask_lightning.cli.main import main as ahamask
from ahamask_lightning.data import ManifestDataModule
from ahamask_lightning.data.manifest import check_manifest_file
from ahamask_lightning.data.shar import is_shar_dir, iter_shar, shar_fields

# FLAC stores 16-bit samples: the audio read back differs from the float WAVs by the rounding
QUANTUM = 1 / 32768


def _export(tmp_path: Path, capsys) -> tuple[str, Path]:
    jsonl, _ = write_corpus(tmp_path)
    with open(jsonl, "a") as fh:  # one bad line: skipped, counted and named, the rest written
        fh.write(json.dumps({"id": "bad", "audio": "audio/c0.wav", "task": "karaoke", "text": "la"}) + "\n")
    out = tmp_path / "shar"
    assert ahamask(["data", "shar", jsonl, "--out", str(out), "--shard-size", "3"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == (f"8 cuts -> {out} (3 shards); 1 rejected (unknown_task 1; first: {jsonl}:9: "
                           "unknown_task)"), printed
    return jsonl, out


def test_export_writes_the_checked_cuts_in_shards(tmp_path: Path, capsys) -> None:
    _, out = _export(tmp_path, capsys)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{kind}.{i:06d}.{ext}" for i in range(3)
                           for kind, ext in (("cuts", "jsonl.gz"), ("recording", "tar"), ("audio_b", "tar")))
    assert is_shar_dir(str(out)) and not is_shar_dir(str(tmp_path))
    cuts = [cut for _, cut in iter_shar(str(out))]
    assert [c.id for c in cuts] == [f"c{i}" for i in range(8)]
    assert "origin" not in cuts[0].custom  # the reader's bookkeeping is not data
    assert cuts[5].start == 0 and cuts[5].duration == pytest.approx(1.25)  # the segment alone was written
    assert cuts[6].custom["audio_b_unaligned"] is True and cuts[6].load_audio_b().shape[1] > 0


def test_a_clip_that_does_not_decode_is_counted_and_the_rest_written(tmp_path: Path, capsys) -> None:
    """A cut manifest's files are first opened by the writer: an undecodable one is skipped and counted."""
    _, cuts = write_corpus(tmp_path)
    manifest = tmp_path / "train.cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(manifest)
    (tmp_path / "audio" / "c2.wav").write_bytes(b"RIFF" + bytes(200))  # a WAV header promise and no audio
    out = tmp_path / "shar"
    assert ahamask(["data", "shar", str(manifest), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        f"7 cuts -> {out} (1 shards); 1 rejected (unreadable_audio 1)"
    assert [c.id for _, c in iter_shar(str(out))] == [f"c{i}" for i in range(8) if i != 2]


def test_a_shar_directory_gives_the_jsonl_manifests_batches(tmp_path: Path, capsys) -> None:
    jsonl, out = _export(tmp_path, capsys)

    def samples(manifest: str) -> list[list[dict]]:
        dm = ManifestDataModule(train=manifest, known_tasks={"gr"}, min_seconds=0.5, seed=2, shuffle_buffer=4,
                                batch_size=3)
        return samples_of(dm.train_dataloader())

    a, b = samples(jsonl), samples(str(out))
    assert [[s["id"] for s in x] for x in a] == [[s["id"] for s in x] for x in b]
    for sa, sb in zip((s for x in a for s in x), (s for x in b for s in x)):
        assert {k: sa[k] for k in ("task", "text", "instruction", "meta")} == \
               {k: sb[k] for k in ("task", "text", "instruction", "meta")}
        assert sa["audio"].shape == sb["audio"].shape, sa["id"]  # pairs: A + 0.1 s + B; segments cut
        assert torch.allclose(sa["audio"], sb["audio"], rtol=0, atol=2 * QUANTUM), \
            (sa["id"], float((sa["audio"] - sb["audio"]).abs().max()))


def test_damaged_or_missing_shards_are_one_line(tmp_path: Path, capsys) -> None:
    _, out = _export(tmp_path, capsys)
    tar = out / "recording.000001.tar"
    tar.write_bytes(tar.read_bytes()[:700])  # a shard cut short (a partial copy)
    with pytest.raises(ValueError, match=rf"^{out}: Shar shards unreadable after cut 3: ") as err:
        list(iter_shar(str(out)))
    assert "\n" not in str(err.value)
    (out / "audio_b.000002.tar").unlink()  # a copy that missed a file
    with pytest.raises(ValueError, match=rf"^{out}: 2 audio_b shards for 3 cut shards; expected a Lhotse Shar"):
        check_manifest_file(str(out))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="a folder, but not a Lhotse Shar directory"):
        check_manifest_file(str(empty))
    assert ahamask(["data", "shar", str(tmp_path / "train.jsonl"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"ahamask: error: --out: {out} is not empty (Shar shards are "
                                               "written into an empty folder)")


def _dm_samples(manifest: str) -> list[list[dict]]:
    dm = ManifestDataModule(train=manifest, known_tasks={"gr"}, min_seconds=0.5, seed=2, shuffle_buffer=4,
                            batch_size=3)
    return samples_of(dm.train_dataloader())


def test_a_shar_index_reads_shards_through_commands_and_relative_paths(tmp_path: Path, capsys) -> None:
    """A ``*.shar.json`` index (Lhotse's ``fields``) stands where the folder does: with the absolute
    paths ``--index`` writes, with ``pipe:`` commands (the route Lhotse takes for URLs and commands,
    not a local open) and with paths relative to the index; the batches are the folder's."""
    jsonl, _ = write_corpus(tmp_path)
    out, written = tmp_path / "shar", tmp_path / "written.shar.json"
    assert ahamask(["data", "shar", jsonl, "--out", str(out), "--shard-size", "3", "--index", str(written)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"; index {written}")
    fields = json.loads(written.read_text())
    assert set(fields) == {"cuts", "recording", "audio_b"} and len(fields["cuts"]) == 3
    assert fields["recording"][1] == f"{out.resolve()}/recording.000001.tar"
    indexes = {"written": written, "piped": tmp_path / "piped.shar.json", "relative": tmp_path / "relative.shar.json"}
    # a command's output is read as the shard itself: the gzipped cut shards are unpacked by the command
    indexes["piped"].write_text(json.dumps({k: [f"pipe:{'gunzip -c' if k == 'cuts' else 'cat'} {v}" for v in vs]
                                            for k, vs in fields.items()}))
    indexes["relative"].write_text(json.dumps({k: [v.replace(f"{out.resolve()}/", "shar/") for v in vs]
                                               for k, vs in fields.items()}))
    by_folder = _dm_samples(str(out))
    for name, index in indexes.items():
        check_manifest_file(str(index))
        by_index = _dm_samples(str(index))
        assert [[s["id"] for s in x] for x in by_index] == [[s["id"] for s in x] for x in by_folder], name
        for sa, sb in zip((s for x in by_folder for s in x), (s for x in by_index for s in x)):
            assert sa["text"] == sb["text"] and torch.equal(sa["audio"], sb["audio"]), (name, sa["id"])


@pytest.mark.parametrize("case", ["no_recording", "short_list", "missing_shard", "not_json", "bad_name", "url"])
def test_a_bad_shar_index_is_one_line_naming_the_key(case: str, tmp_path: Path, capsys) -> None:
    jsonl, _ = _export(tmp_path, capsys)
    fields = {"cuts": [f"shar/cuts.{i:06d}.jsonl.gz" for i in range(3)],
              "recording": [f"shar/recording.{i:06d}.tar" for i in range(3)]}
    index = tmp_path / "bad.shar.json"
    if case == "no_recording":
        del fields["recording"]
        expected = "key 'recording': missing (the audio shards)"
    elif case == "short_list":
        fields["recording"] = fields["recording"][:2]
        expected = "key 'recording': 2 sources for 3 cut shards"
    elif case == "missing_shard":
        fields["recording"][2] = "shar/recording.000009.tar"
        expected = f"key 'recording': shard shar/recording.000009.tar not found (looked at {tmp_path}/shar/"
    elif case == "url":
        fields["recording"][0] = "s3://bucket/corpus/recording.000000.tar"
        if importlib.util.find_spec("smart_open") is not None:
            pytest.skip("smart_open is installed: an s3:// source is then Lhotse's to open")
        expected = ("key 'recording': s3://bucket/corpus/recording.000000.tar is a URL, which Lhotse opens "
                    "with smart_open")
    elif case == "bad_name":
        assert ahamask(["data", "shar", jsonl, "--out", str(tmp_path / "o2"), "--index", str(tmp_path / "i.json")]) == 2
        assert capsys.readouterr().err.strip() == (f"ahamask: error: --index: {tmp_path / 'i.json'}: expected a file "
                                                   "name ending in .shar.json")
        assert not (tmp_path / "o2").exists()
        return
    index.write_text("{not json" if case == "not_json" else json.dumps(fields))
    if case == "not_json":
        expected = "not a readable Shar index"
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        check_manifest_file(str(index))
    assert str(err.value).startswith(f"{index}: ") and expected in str(err.value) and "\n" not in str(err.value)


def _rank_reads(index: Path, log: Path, rank: int, world: int, epoch: int = 0,
                resume_after: int | None = None) -> tuple[list[str], set[str]]:
    """The ids one training rank gets in an epoch (or in its rest, after ``resume_after`` batches),
    and the shard files it opened (the index logs each open)."""
    log.unlink(missing_ok=True)
    dm = ManifestDataModule(train=str(index), known_tasks={"gr"}, min_seconds=0.5, seed=2, shuffle_buffer=4,
                            batch_size=2, rank=rank, world_size=world)
    if resume_after is not None:
        dm.load_state_dict({"train": {"epoch": epoch, "batches": {str(rank): resume_after}, "world_size": world}})
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    ids = [s["id"] for batch in samples_of(loader) for s in batch]
    return ids, set(log.read_text().split()) if log.exists() else set()


def test_training_ranks_read_only_their_own_shards(tmp_path: Path, capsys) -> None:
    """Two training ranks over 4 shards: each opens only its 2 shards (every field of them), the two
    share no cut and together have every cut, and the deal changes between epochs; with more ranks
    than shards every rank reads every shard and keeps its share of the batches, as before."""
    jsonl, _ = write_corpus(tmp_path)
    out = tmp_path / "shar"
    assert ahamask(["data", "shar", jsonl, "--out", str(out), "--shard-size", "2"]) == 0
    capsys.readouterr()
    fields, log = shar_fields(str(out)), tmp_path / "opened.log"
    assert len(fields["cuts"]) == 4
    index = tmp_path / "logged.shar.json"  # each source a command that notes the file it opens
    index.write_text(json.dumps({k: [f"pipe:echo {Path(v).name} >> {log}; {'gunzip -c' if k == 'cuts' else 'cat'} {v}"
                                     for v in vs] for k, vs in fields.items()}))
    shard_of = {c.id: f"{i:06d}" for i, path in enumerate(fields["cuts"]) for c in CutSet.from_jsonl_lazy(path)}
    everyone = sorted(shard_of)
    deals = []
    for epoch in range(4):
        (ids0, opened0), (ids1, opened1) = (_rank_reads(index, log, r, 2, epoch) for r in (0, 1))
        assert sorted(ids0 + ids1) == everyone and not set(ids0) & set(ids1)
        deal = []
        for ids, opened in ((ids0, opened0), (ids1, opened1)):
            shards = {shard_of[i] for i in ids}
            assert len(shards) == 2
            assert opened == {f"{field}.{n}.{ext}" for n in shards
                              for field, ext in (("cuts", "jsonl.gz"), ("recording", "tar"), ("audio_b", "tar"))}
            deal.append(shards)
        deals.append(deal)
    assert len({str(sorted(map(sorted, d))) for d in deals}) > 1  # reshuffled: the deal changes across epochs
    # the deal follows the seed and epoch alone: the same shards from a copy of the corpus elsewhere
    moved = tmp_path / "elsewhere" / "logged.shar.json"
    moved.parent.mkdir()
    moved.write_text(index.read_text())
    assert _rank_reads(moved, log, 1, 2, 3)[0] == ids1
    assert _rank_reads(index, log, 1, 2, 3, resume_after=1)[0] == ids1[2:]  # exact resume: one batch of 2 done
    ids, opened = zip(*(_rank_reads(index, log, r, 5) for r in range(5)))  # 5 ranks, 4 shards: batches split
    assert sorted(i for rank_ids in ids for i in rank_ids) == everyone
    assert all(len(o) == 12 for o in opened)  # every rank read all 4 shards' 3 files


def test_export_at_the_models_rate_gives_the_same_batches(tmp_path: Path, capsys) -> None:
    """``--sample-rate 16000`` resamples at export (the corpus has 8 kHz clips, a segment and a pair):
    the loader then gets 16 kHz audio with nothing left to resample, and the batches are the JSONL
    manifest's, which resamples on load, within FLAC's rounding and float error."""
    jsonl, _ = write_corpus(tmp_path)
    out = tmp_path / "shar16k"
    assert ahamask(["data", "shar", jsonl, "--out", str(out), "--sample-rate", "16000"]) == 0
    capsys.readouterr()
    cuts = [cut for _, cut in iter_shar(str(out))]
    assert {c.recording.sampling_rate for c in cuts} == {16000}
    pair = next(c for c in cuts if c.custom.get("audio_b_unaligned"))
    assert pair.custom["audio_b"].sampling_rate == 16000 and pair.load_audio_b().shape[1] == \
        pair.custom["audio_b_samples"]
    a, b = _dm_samples(jsonl), _dm_samples(str(out))
    assert [[s["id"] for s in x] for x in a] == [[s["id"] for s in x] for x in b]
    for sa, sb in zip((s for x in a for s in x), (s for x in b for s in x)):
        assert sa["audio"].shape == sb["audio"].shape, sa["id"]
        assert torch.allclose(sa["audio"], sb["audio"], rtol=0, atol=2 * QUANTUM), \
            (sa["id"], float((sa["audio"] - sb["audio"]).abs().max()))
    assert ahamask(["data", "shar", jsonl, "--out", str(tmp_path / "x"), "--sample-rate", "0"]) == 2
    assert "--sample-rate: 0; expected a positive rate in Hz" in capsys.readouterr().err
