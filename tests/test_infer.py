"""``ahamask infer`` on the committed TinyLALM with real synthesised speech (espeak-ng + sox).

Two masks (a random 40-head mask and ``all-on``) over three clips: one output line per clip and
mask, the JSONL records, the pruned model's text equal to the gated model's, the mixed-mask batch
equal to mask-by-mask batches, and bad input refused in one line naming the file.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ahamask_lightning.analysis.masks import mask_to_logits, random_mask
from ahamask_lightning.masking import save_mask

UTTERANCES = [("m3", "the quick brown fox jumps over the lazy dog"), ("f2", "a small cat sat on the red mat"),
              ("m4", "we will meet at the old bridge tomorrow")]
TOKENS = ["--max-new-tokens", "12"]


def ahamask(argv: list[str]) -> int:
    """The console script's entry, in process."""
    from ahamask_lightning.cli.main import main

    return main(argv)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed to synthesise speech")
    from data_modules.synth.speech import render_utterance

    out = tmp_path_factory.mktemp("infer_clips")
    paths = []
    for i, (variant, text) in enumerate(UTTERANCES):
        path = str(out / f"clip{i}.wav")
        render_utterance({"path": path, "text": text, "voice": "en-us", "variant": variant, "rate": 160,
                          "pitch": 50})
        paths.append(path)
    return paths


def _mask_file(path: Path, shape: tuple[int, int], active: int, seed: int) -> str:
    save_mask(path, mask_to_logits(random_mask(shape, active, seed)), random_seed=seed)
    return str(path)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_masks_one_line_per_clip_and_mask_and_pruned_text_equals_gated(clips, tmp_path, in_repo, capsys):
    mask = _mask_file(tmp_path / "r40.safetensors", (8, 16), 40, seed=0)
    gated_out, pruned_out = tmp_path / "gated.jsonl", tmp_path / "pruned.jsonl"
    args = ["infer", "--model", "tiny", "--mask", mask, "--mask", "all-on", "--audio", *clips, *TOKENS]
    assert ahamask(args + ["--out", str(gated_out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(clips) * 2
    for i, clip in enumerate(clips):
        assert lines[2 * i].startswith(f"{clip}  {mask}  ") and lines[2 * i + 1].startswith(f"{clip}  all-on  ")
    gated = _records(gated_out)
    assert [(r["clip"], r["mask"]) for r in gated] == [(c, m) for c in clips for m in (mask, "all-on")]
    assert [r["active_heads"] for r in gated] == [40, 128] * len(clips)
    assert all(r["heads"] == 128 and not r["pruned"] for r in gated)
    assert all(line.endswith(r["text"]) for line, r in zip(lines, gated))
    by_mask = {m: [r["text"] for r in gated if r["mask"] == m] for m in (mask, "all-on")}
    assert by_mask[mask] != by_mask["all-on"]  # the mask changes what the model says
    assert all(by_mask["all-on"])  # the unmasked testbed transcribes (no empty output)

    assert ahamask(args + ["--prune", "--out", str(pruned_out)]) == 0
    pruned = _records(pruned_out)
    assert all(r["pruned"] for r in pruned)
    assert [r["text"] for r in pruned] == [r["text"] for r in gated]
    assert capsys.readouterr().out.splitlines() == lines


def test_mixed_mask_batch_equals_mask_by_mask(clips, tmp_path, in_repo):
    """One generate call whose samples carry three different masks gives each mask's own batch text."""
    from ahamask_lightning.serving import build_adapter, infer, load_clips, load_masks, model_spec

    adapter = build_adapter(model_spec("tiny"))
    names = [_mask_file(tmp_path / f"m{a}.safetensors", (8, 16), a, seed=a) for a in (40, 90)] + ["all-on"]
    masks = load_masks(names, (8, 16))
    audio = load_clips(clips, None, adapter)
    gen = {"max_new_tokens": 12}
    mixed = infer(adapter, masks, audio, batch_size=len(masks) * len(audio), generation=gen)
    alone = {m.name: infer(adapter, [m], audio, batch_size=len(audio), generation=gen) for m in masks}
    for rec in mixed:
        match = [r for r in alone[rec["mask"]] if r["clip"] == rec["clip"]]
        assert [r["text"] for r in match] == [rec["text"]]
    assert len({r["text"] for r in mixed}) > len(audio)  # the masks really differ in the batch


def test_a_clips_text_does_not_depend_on_its_batch(clips, in_repo):
    """Batch size 1 and one batch of every clip give each clip the same text (so --prune, which
    groups clips per mask, gives the gated text at any --batch-size)."""
    from ahamask_lightning.serving import build_adapter, infer, load_clips, load_masks, model_spec

    adapter = build_adapter(model_spec("tiny"))
    masks = load_masks(["all-on"], (8, 16))
    audio = load_clips(clips, None, adapter)
    gen = {"max_new_tokens": 12}
    one_by_one = infer(adapter, masks, audio, batch_size=1, generation=gen)
    together = infer(adapter, masks, audio, batch_size=len(audio), generation=gen)
    assert [r["text"] for r in together] == [r["text"] for r in one_by_one]


def test_weights_and_manifest_pick_the_6x8_testbed(clips, tmp_path, in_repo, capsys):
    mask = _mask_file(tmp_path / "small.safetensors", (6, 8), 20, seed=1)
    manifest = Path(clips[0]).parent / "clips.jsonl"  # beside the audio: paths relative to it
    manifest.write_text("".join(json.dumps({"id": f"utt{i}", "audio": Path(c).name}) + "\n"
                                for i, c in enumerate(clips[:2])))
    out = tmp_path / "p.jsonl"
    assert ahamask(["infer", "--model", "tiny", "--weights", "checkpoints/tiny_lalm", "--mask", mask,
                    "--manifest", str(manifest), "--out", str(out), *TOKENS]) == 0
    recs = _records(out)
    assert [r["clip"] for r in recs] == ["utt0", "utt1"] and {r["heads"] for r in recs} == {48}
    assert capsys.readouterr().out.splitlines()[0].startswith(f"utt0  {mask}  ")


def test_a_manifest_may_name_audio_anywhere_and_a_bad_line_is_named(clips, tmp_path, in_repo, capsys):
    """infer's manifest is the user's list of files, like --audio: absolute paths elsewhere are
    taken; a clip that cannot be used is named with its manifest line."""
    manifest = tmp_path / "lists" / "mine.jsonl"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"id": "far", "audio": clips[0]}) + "\n")
    out = tmp_path / "p.jsonl"
    assert ahamask(["infer", "--model", "tiny", "--mask", "all-on", "--manifest", str(manifest), "--out", str(out),
                    *TOKENS]) == 0
    assert [r["clip"] for r in _records(out)] == ["far"]
    manifest.write_text(json.dumps({"id": "far", "audio": clips[0]}) + "\n" + json.dumps({"audio": "gone.wav"}) + "\n")
    assert ahamask(["infer", "--model", "tiny", "--mask", "all-on", "--manifest", str(manifest), "--out", str(out)]) == 2
    assert f"{manifest}:2: " in capsys.readouterr().err


def test_model_spec_from_name_weights_and_yaml(in_repo):
    from ahamask_lightning.serving import TINY_DEFAULT, model_spec

    assert model_spec("tiny")["init_args"] == {"checkpoint": TINY_DEFAULT} == {"checkpoint": "checkpoints/tiny_lalm_8x16g"}
    assert model_spec("tiny", "checkpoints/tiny_lalm")["init_args"]["checkpoint"] == "checkpoints/tiny_lalm"
    spec = model_spec(config="experiments/gr_qwen2audio_tiny.yaml")
    assert spec == {"class_path": "ahamask_lightning.models.Qwen2AudioAdapter",
                    "init_args": {"variant": "instruct", "tiny": True}, "seed": 0}  # the YAML's seed_everything
    from ahamask_lightning.serving import build_adapter

    first, again = build_adapter(spec), build_adapter(spec)  # a random model: the same one each time
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert model_spec(config="experiments/gr_qwen2audio_tiny.yaml", weights="/w")["init_args"]["pretrained"] == "/w"
    with pytest.raises(ValueError, match="--model: expected 'tiny'"):
        model_spec("qwen")


@pytest.mark.parametrize("case", ["missing_audio", "unreadable_audio", "mask_shape", "missing_mask",
                                  "bad_manifest_line"])
def test_bad_input_is_one_line_naming_the_file(case, clips, tmp_path, in_repo, capsys):
    mask = _mask_file(tmp_path / "ok.safetensors", (8, 16), 40, seed=0)
    audio, extra = [clips[0]], []
    if case == "missing_audio":
        audio, expected = [str(tmp_path / "nope.wav")], [str(tmp_path / "nope.wav"), "missing_file"]
    elif case == "unreadable_audio":
        bad = tmp_path / "text.wav"
        bad.write_text("not audio")
        audio, expected = [str(bad)], [str(bad), "unreadable_audio", "expected a readable audio file"]
    elif case == "mask_shape":
        mask = _mask_file(tmp_path / "small.safetensors", (6, 8), 20, seed=0)
        expected = [mask, "(6, 8) does not fit the model, expected (8, 16)"]
    elif case == "missing_mask":
        mask = str(tmp_path / "absent.safetensors")
        expected = [mask, "mask file not found"]
    else:
        manifest = Path(clips[0]).parent / "bad.jsonl"
        manifest.write_text(json.dumps({"audio": Path(clips[0]).name}) + "\n" + json.dumps({"id": "x"}) + "\n")
        audio, extra = [], ["--manifest", str(manifest)]
        expected = [f"{manifest}:2", "expected a JSON object with 'audio'"]
    out = tmp_path / "p.jsonl"
    assert ahamask(["infer", "--model", "tiny", "--mask", mask, *audio, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(e in err for e in expected), err
    assert not out.exists()


def test_an_out_that_is_a_directory_is_refused_before_loading(clips, tmp_path, in_repo, capsys):
    assert ahamask(["infer", "--model", "tiny", "--mask", "all-on", clips[0], "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"ahamask: error: --out {tmp_path}: is a directory; expected the " \
                                              "JSONL file to write"


def test_default_testbed_outside_the_repository_is_one_line(clips, tmp_path, monkeypatch, capsys):
    """``--model tiny`` names the committed testbed by a repository path: from elsewhere, one line says so."""
    monkeypatch.chdir(tmp_path)
    mask = _mask_file(tmp_path / "ok.safetensors", (8, 16), 40, seed=0)
    assert ahamask(["infer", "--model", "tiny", "--mask", mask, clips[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "checkpoints/tiny_lalm_8x16g: no TinyLALM checkpoint folder here" in err
    assert "run from the repository root" in err


def test_missing_files_and_weights_are_named_before_any_model_loads(clips, tmp_path, in_repo, capsys, monkeypatch):
    """Every absent mask and audio file in one line, before the weights are looked for; absent weights
    then name the option of this command (``--weights``)."""
    monkeypatch.delenv("AHAMASK_QWEN2AUDIO_PATH", raising=False)
    config = ["infer", "--config", "experiments/gr_qwen2audio_instruct.yaml", "--out", str(tmp_path / "p.jsonl")]
    assert ahamask([*config, "--mask", str(tmp_path / "gr.safetensors"), clips[0], str(tmp_path / "b.wav")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"ahamask: error: {tmp_path / 'gr.safetensors'}: mask file not found; "
                   f"{tmp_path / 'b.wav'}: missing_file")
    assert ahamask([*config, "--mask", "all-on", clips[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Qwen2-Audio weights not found" in err and err.endswith("--weights DIR")
