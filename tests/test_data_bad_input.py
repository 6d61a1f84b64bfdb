"""Bad samples are skipped, logged, counted by reason and written to the rejects files."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ahamask_lightning.data import ManifestDataModule, read_reject_files

# id -> expected reason (None: a good sample, even if unusual).
EXPECTED = {
    "good": None,
    "rate8k": None,  # another sample rate: resampled
    "sixch": None,  # many channels: first one
    "missing": "missing_file",
    "corrupt": "unreadable_audio",
    "empty": "empty_audio",
    "nan": "nan_or_inf",
    "inf": "nan_or_inf",
    "long": "too_long",
    "notext": "empty_target",
    "blank": "empty_target",
    "task": "unknown_task",
    "latin": "bad_encoding",  # a Latin-1 byte in the line: not trained on with U+FFFD
    "surrogate": "bad_encoding",  # a JSON escape that makes a lone surrogate
    "essay": "target_too_long",  # 20,000 characters: far beyond any model's context
    "escape": "path_outside_root",  # ../ climbing out of the corpus to a real file
    "absolute": "path_outside_root",  # an absolute path to that same file
    "cut": "truncated_audio",  # the header promises twice the frames the file holds
    "loop": "symlink_loop",  # a link to itself
    "segtext": "bad_segment",  # meta.start is a string
    "segnull": "bad_segment",  # meta.start is null
    "segpast": "bad_segment",  # ends at 1.5 s in a 0.5 s file: would be trained on padded with silence
    "refs": "bad_references",  # meta.references is one string, not a list of them
    "take_dup3": "reserved_id",  # the form of a padding duplicate's id, which evaluation leaves out
    "mail": "bad_label",  # a gr target that is no label: its metric would stop the test half-way
}


def build(root: Path) -> str:
    """A manifest holding every kind of bad line next to good ones (paths relative to root)."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def wav(name: str, data: np.ndarray, rate: int = 16000) -> str:
        sf.write(audio / name, data.astype("float32"), rate, subtype="FLOAT")
        return f"audio/{name}"

    noise = 0.1 * rng.standard_normal(8000)
    files = {
        "good": wav("good.wav", noise),
        "rate8k": wav("rate8k.wav", noise, 8000),
        "sixch": wav("sixch.wav", np.tile(noise[:, None], (1, 6))),
        "missing": "audio/nowhere.wav",
        "empty": wav("empty.wav", np.zeros(0)),
        "nan": wav("nan.wav", np.where(np.arange(8000) == 700, np.nan, noise)),
        "inf": wav("inf.wav", np.where(np.arange(8000) == 9, np.inf, noise)),
        "long": wav("long.wav", np.zeros(8000 * 3), 8000),
        "notext": "audio/good.wav",
        "blank": "audio/good.wav",
        "task": "audio/good.wav",
    }
    (audio / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" * 3)
    files["corrupt"] = "audio/corrupt.wav"
    # a good file outside the corpus (beside its root), reached by ../ and by absolute path
    sf.write(root.parent / f"outside-{root.name}.wav", noise.astype("float32"), 16000)
    files["escape"] = f"../../../outside-{root.name}.wav"
    files["absolute"] = str(root.parent / f"outside-{root.name}.wav")
    whole = audio / "whole.wav"
    sf.write(whole, noise.astype("float32"), 16000, subtype="PCM_16")
    data = whole.read_bytes()
    (audio / "cut.wav").write_bytes(data[: 44 + (len(data) - 44) // 2])  # a download cut in half
    files["cut"] = "audio/cut.wav"
    os.symlink("loop.wav", audio / "loop.wav")
    files["loop"] = "audio/loop.wav"
    for sid in ("latin", "surrogate", "essay", "segtext", "segnull", "segpast", "refs", "take_dup3", "mail"):
        files[sid] = "audio/good.wav"
    man = root / "manifests" / "test" / "mixed.jsonl"
    man.parent.mkdir(parents=True)
    lines = []
    for sid, rel in files.items():
        row = {"id": sid, "audio": rel, "task": "gr", "text": "Male"}
        if sid == "notext":
            del row["text"]
        if sid == "blank":
            row["text"] = "   "
        if sid == "task":
            row["task"] = "karaoke"
        if sid == "essay":
            row["text"] = "word " * 4000
        if sid in ("segtext", "segnull"):
            row["meta"] = {"start": "abc" if sid == "segtext" else None, "end": 0.4}
        if sid == "segpast":
            row["meta"] = {"start": 0.25, "end": 1.5}
        if sid == "refs":
            row["meta"] = {"references": "Male"}
        if sid == "mail":
            row["text"] = "Mail"
        text = json.dumps(row).encode()
        if sid == "latin":
            text = text.replace(b'"Male"', b'"M\xe9le"')  # Latin-1 bytes, not UTF-8
        if sid == "surrogate":
            text = text.replace(b'"Male"', b'"Ma\\ud800le"')
        lines.append(text)
    lines.insert(3, b'{"id": "broken", "audio": "audio/good.wav", "task": ')  # malformed JSON: line 4
    lines.insert(5, b"")  # a blank line is layout, not a sample
    man.write_bytes(b"\n".join(lines) + b"\n")
    return str(man)


@pytest.mark.parametrize("workers", [0, 2])
def test_each_bad_case_gets_its_reason(tmp_path: Path, workers: int, caplog: pytest.LogCaptureFixture) -> None:
    man = build(tmp_path / "data")
    rejects = tmp_path / "run" / "rejects.jsonl"
    dm = ManifestDataModule(val=man, batch_size=4, num_workers=workers, max_seconds=2.0,
                            known_tasks={"gr"}, rejects_path=str(rejects))
    dm.setup("validate")
    with caplog.at_level(logging.WARNING, logger="ahamask_lightning.data"):
        samples = [s for b in dm.val_dataloader()[0] for s in b]
    assert sorted(s["id"] for s in samples) == ["good", "rate8k", "sixch"]
    assert all(s["audio"].numel() == 16000 for s in samples)

    found = read_reject_files(str(rejects))
    entries = [json.loads(t) for p in sorted(rejects.parent.glob("rejects.val.r0w*.jsonl")) for t in p.open()]
    by_id = {e["id"]: e for e in entries}
    for sid, reason in EXPECTED.items():
        if reason is not None:
            assert by_id[sid]["reason"] == reason, sid
            assert found[(man, by_id[sid]["line"])] == reason
    assert by_id[None]["reason"] == "malformed_json" and by_id[None]["line"] == 4
    assert all(e["manifest"] == man and e["stage"] == "val" for e in entries)

    summary = dm.reject_summary()
    assert summary == {"bad_encoding": 2, "bad_label": 1, "bad_references": 1, "bad_segment": 3, "empty_audio": 1, "empty_target": 2, "malformed_json": 1,
                       "missing_file": 1, "nan_or_inf": 2, "path_outside_root": 2, "reserved_id": 1,
                       "symlink_loop": 1, "target_too_long": 1, "too_long": 1, "truncated_audio": 1,
                       "unknown_task": 1, "unreadable_audio": 1}
    if workers == 0:  # worker processes log in their own process, beyond caplog's reach
        assert any(f"{man}:4:" in r.getMessage() and "malformed_json" in r.getMessage() for r in caplog.records)

    # A second pass counts the same bad samples once.
    list(dm.val_dataloader()[0])
    assert dm.reject_summary() == summary


def test_counts_reach_the_main_process_without_a_rejects_file(tmp_path: Path) -> None:
    man = build(tmp_path / "data")
    dm = ManifestDataModule(train=man, batch_size=2, num_workers=2, max_seconds=2.0, known_tasks={"gr"})
    assert len([s for b in dm.train_dataloader() for s in b]) == 3
    assert sum(dm.reject_summary().values()) == len([r for r in EXPECTED.values() if r]) + 1  # + the malformed line


def test_all_bad_manifest_stops_with_a_clear_error(tmp_path: Path) -> None:
    man = tmp_path / "bad.jsonl"
    man.write_text('{"id": "a", "audio": "x.wav", "task": "gr", "text": "Male"}\nnot json\n'
                   '{"id": "c", "audio": "y.wav", "task": "gr", "text": ""}\n')
    dm = ManifestDataModule(train=str(man), known_tasks={"gr"})
    with pytest.raises(RuntimeError) as err:
        list(dm.train_dataloader())
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(man))
    assert "no valid samples: 3 rejected" in message
    assert "empty_target=1" in message and "malformed_json=1" in message and "missing_file=1" in message


def test_missing_or_empty_manifest_fails_at_setup(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ManifestDataModule(train=str(tmp_path / "none.jsonl")).setup("fit")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no valid samples"):
        ManifestDataModule(train=str(empty)).setup("fit")


def test_unknown_task_uses_the_registry_by_default(tmp_path: Path) -> None:
    man = build(tmp_path / "data")
    dm = ManifestDataModule(val=man, max_seconds=2.0)
    if dm.known_tasks is None:
        pytest.skip("task registry not importable")
    assert "gr" in dm.known_tasks and "karaoke" not in dm.known_tasks
    list(dm.val_dataloader()[0])
    assert dm.reject_summary()["unknown_task"] == 1


def _parse(tmp_path: Path, line: str | bytes, number: int = 2, **kwargs) -> object:
    from ahamask_lightning.data.manifest import parse_line
    from ahamask_lightning.data.paths import PathResolver

    man = str(tmp_path / "corpus" / "m.jsonl")
    resolver = PathResolver(man, kwargs.pop("audio_root", None), kwargs.pop("allow_outside_root", False))
    return parse_line(line, man, number, resolver, {"gr", "asr"}, **kwargs)


def _row(**fields) -> str:
    return json.dumps({"id": "x", "audio": "a.wav", "task": "gr", "text": "Male", **fields}, ensure_ascii=False)


@pytest.mark.parametrize("meta", [{"start": "abc", "end": 2}, {"start": None, "end": 2}, {"start": 1},
                                  {"end": 2}, {"start": 2, "end": 1}, {"start": -1, "end": 1},
                                  {"start": True, "end": 2}, {"start": 0, "end": float("inf")},
                                  {"start": float("nan"), "end": 2}, {"start": [0], "end": 2}])
def test_a_bad_segment_is_rejected_when_parsed(tmp_path: Path, meta: dict) -> None:
    rec = _parse(tmp_path, _row(meta=meta))
    assert rec.reason == "bad_segment" and "meta.start" in rec.detail


def test_a_good_segment_is_kept(tmp_path: Path) -> None:
    assert _parse(tmp_path, _row(meta={"start": 1, "end": 2.5, "talk": "t"})).segment == (1.0, 2.5)
    assert _parse(tmp_path, _row(meta={"talk": "t"})).segment is None
    assert _parse(tmp_path, _row(audio=["a.wav", "b.wav"], meta={"start": 1, "end": 2})).reason == "bad_segment"


@pytest.mark.parametrize("refs", ["one caption", [], ["a", ""], ["a", 3], {"0": "a"}])
def test_bad_references_are_rejected_when_parsed(tmp_path: Path, refs) -> None:
    rec = _parse(tmp_path, _row(task="gr", meta={"references": refs}))
    assert rec.reason == "bad_references" and "meta.references" in rec.detail


def test_good_references_are_kept(tmp_path: Path) -> None:
    assert _parse(tmp_path, _row(meta={"references": ["Rain falls", "Heavy rain"]})).meta["references"] == [
        "Rain falls", "Heavy rain"]


def test_encoding_is_checked_per_line(tmp_path: Path) -> None:
    assert _parse(tmp_path, _row(text="Mâle").encode("latin-1")).reason == "bad_encoding"
    assert _parse(tmp_path, _row(text="Mâle").encode("latin-1")).id == "x"  # named in the rejects file
    assert _parse(tmp_path, _row().replace("Male", "Ma\\udc80le")).reason == "bad_encoding"
    assert _parse(tmp_path, _row(task="asr", text="Mâle").encode()).text == "Mâle"
    assert _parse(tmp_path, b"\xef\xbb\xbf" + _row().encode(), number=1).text == "Male"  # a BOM on line 1


def test_json_that_breaks_the_parser_is_malformed_not_fatal(tmp_path: Path) -> None:
    assert _parse(tmp_path, "[" * 100_000 + "]" * 100_000).reason == "malformed_json"
    assert _parse(tmp_path, _row(duration=0).replace("0}", "9" * 5000 + "}")).reason == "malformed_json"


def test_target_length_limit(tmp_path: Path) -> None:
    assert _parse(tmp_path, _row(task="asr", text="a" * 30), max_target_chars=30).text == "a" * 30
    rec = _parse(tmp_path, _row(task="asr", text="a" * 31), max_target_chars=30)
    assert rec.reason == "target_too_long" and "31 characters" in rec.detail
    assert _parse(tmp_path, _row(task="asr", text="a" * 20_000), max_target_chars=None).text == "a" * 20_000
    with pytest.raises(ValueError, match="max_target_chars"):
        ManifestDataModule(train="x.jsonl", max_target_chars=0)


def test_audio_paths_stay_inside_the_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    assert _parse(tmp_path, _row(audio="sub/../a.wav")).audio == [str(corpus / "sub/../a.wav")]
    assert _parse(tmp_path, _row(audio=str(corpus / "audio" / "a.wav"))).audio == [str(corpus / "audio" / "a.wav")]
    for path in ("../a.wav", "sub/../../a.wav", str(tmp_path / "a.wav"), "/etc/passwd", ["a.wav", "../b.wav"]):
        rec = _parse(tmp_path, _row(audio=path))
        assert rec.reason == "path_outside_root", path
        assert _parse(tmp_path, _row(audio=path), allow_outside_root=True).task == "gr"
    # with a documented root, absolute paths must lie inside it, and relative ones resolve in it
    root = str(tmp_path / "raw")
    assert _parse(tmp_path, _row(audio=f"{root}/x/a.wav"), audio_root=root).audio == [f"{root}/x/a.wav"]
    assert _parse(tmp_path, _row(audio="x/a.wav"), audio_root=root).audio == [f"{root}/x/a.wav"]
    assert _parse(tmp_path, _row(audio=f"{root}2/a.wav"), audio_root=root).reason == "path_outside_root"
    assert _parse(tmp_path, _row(audio=str(corpus / "a.wav")), audio_root=root).reason == "path_outside_root"


def test_audio_root_with_a_tilde_resolves_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "corpus").mkdir()
    sf.write(tmp_path / "corpus" / "a.wav", np.zeros(1600, dtype="float32"), 16000)
    rec = _parse(tmp_path, _row(), audio_root="~/corpus")
    assert rec.audio == [str(tmp_path / "corpus" / "a.wav")] and Path(rec.audio[0]).is_file()


def test_a_corpus_read_from_outside_names_the_option(tmp_path: Path) -> None:
    man = tmp_path / "corpus" / "m.jsonl"
    man.parent.mkdir()
    man.write_text(_row(audio="../a.wav") + "\n")
    with pytest.raises(RuntimeError, match="path_outside_root=1.*allow_outside_root"):
        list(ManifestDataModule(train=str(man), known_tasks={"gr"}).train_dataloader())
