"""The masks released with the paper ship as mask files whose provenance file tells the truth."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from ahamask_lightning.masking import load_mask
from ahamask_lightning.released_masks import RELEASED_DIR, released_mask, released_names
from ahamask_lightning.released_masks.convert import convert, readme

PROVENANCE = json.loads((RELEASED_DIR / "salmonn-13b" / "provenance.json").read_text())
# the released checkpoints themselves, where the reference folder sits beside the checkout
SOURCES = Path(__file__).resolve().parents[1] / "../shared/reference/official_masks"


def test_ten_masks_of_the_paper_with_their_recorded_counts() -> None:
    assert len(released_names()) == 10
    for name in released_names():
        mf = load_mask(released_mask(name), shape=(40, 40))
        record = PROVENANCE["masks"][name]
        assert mf.active() == record["active"], name
        assert [int(n) for n in mf.mask.sum(dim=1).tolist()] == record["active_per_layer"], name
        assert mf.metadata["source_sha256"] == record["source_sha256"]
        assert mf.metadata["model_id"] == "salmonn-13b"
    # the paper's figure for the ASR mask
    assert PROVENANCE["masks"]["asr_librispeech"]["active"] == 1525


def test_the_shipped_readme_is_the_generated_one() -> None:
    """The folder's README is what ``convert`` writes for the shipped provenance (nothing edited by hand)."""
    assert (RELEASED_DIR / "salmonn-13b" / "README.md").read_text() == readme(PROVENANCE)


def test_an_unknown_name_is_one_line_listing_the_released_ones() -> None:
    with pytest.raises(ValueError, match="asr_librispeech"):
        released_mask("asr_nowhere")


@pytest.mark.skipif(not SOURCES.is_dir(), reason="the released .pth checkpoints are not beside the checkout")
def test_the_shipped_files_are_the_conversion_of_the_released_checkpoints(tmp_path: Path) -> None:
    record = convert(SOURCES, tmp_path)
    assert sorted(record["masks"]) == released_names()
    for name, entry in record["masks"].items():
        assert entry["source_sha256"] == hashlib.sha256((SOURCES / f"{name}.pth").read_bytes()).hexdigest()
        assert entry == PROVENANCE["masks"][name]
        assert torch.equal(load_mask(tmp_path / f"{name}.safetensors").logits, load_mask(released_mask(name)).logits)


def test_table1_released_tests_the_shipped_masks(tmp_path, in_repo, monkeypatch, capsys) -> None:
    """``reproduce table1 --released``: the shipped masks, no training, only the test manifests asked for."""
    from ahamask_lightning import reproduce
    from ahamask_lightning.cli.reproduce_args import PAPER_TASKS

    for var, path in (("WHISPER", "w"), ("LLM", "l"), ("BEATS", "b.pt"), ("CKPT", "c.pth")):
        (tmp_path / path).touch() if "." in path else (tmp_path / path).mkdir()
        monkeypatch.setenv(f"AHAMASK_SALMONN_{var}", str(tmp_path / path))
    args = reproduce.parser().parse_args(["table1", "--released", "--out", str(tmp_path / "t1")])
    masks, missing = reproduce.masks_to_test(args, args.tasks)
    assert missing == [] and sorted(masks) == sorted(PAPER_TASKS)
    assert load_mask(masks["asr"]).mask.sum() == 1525  # the paper's ASR mask: 1525 of 1600 heads
    # nothing to train: only the test manifests are asked for, not a mask file nor training data
    assert reproduce.main(["table1", "--released", "--tasks", "gr", "--out", str(tmp_path / "t1")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[1:] == ["  data/librispeech/manifests/test-clean/gr.cuts.jsonl.gz"]
    with pytest.raises(SystemExit):  # one source of masks at a time
        reproduce.parser().parse_args(["table1", "--released", "--masks", "m", "--out", "o"])
    assert "not allowed with argument --released" in capsys.readouterr().err
