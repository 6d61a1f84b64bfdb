"""`python -m ahamask_lightning.demo` finds the shipped config and checkpoint from any working
directory when it runs from a checkout, and otherwise says in one line where to run it from."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import data_modules.synth
from ahamask_lightning import demo

REPO = Path(__file__).resolve().parents[1]


class Reached(Exception):
    """Raised by the stand-in for the mask fit: the demo got past its checks."""


def _fake_corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "summary.json").write_text(json.dumps({"n": 10}))
    return root


def test_the_demo_uses_the_checkouts_config_and_checkpoint_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/ or checkpoints/ here
    seen = {}

    def fit_mask(config, out_dir, extra=()):
        seen.update(config=config, extra=list(extra))
        raise Reached

    monkeypatch.setattr(demo, "fit_mask", fit_mask)
    with pytest.raises(Reached):
        demo.main(["--data", str(_fake_corpus(tmp_path / "data")), "--out", str(tmp_path / "out")])
    assert Path(seen["config"]) == REPO / "experiments" / "gr_tiny.yaml"
    extra = seen["extra"]
    checkpoint = extra[extra.index("--model.init_args.model.init_args.checkpoint") + 1]
    assert Path(checkpoint) == REPO / "checkpoints" / "tiny_lalm_8x16g"


@pytest.mark.parametrize("given", [None, "checkpoints/tiny_lalm_8x16g"])
def test_outside_a_checkout_the_demo_says_where_to_run_it_from(tmp_path, monkeypatch, capsys, given):
    """An installed package (no checkout above src/) run from a folder without the shipped files:
    one line, run from the repository root or pass --checkpoint, and no corpus synthesised first."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()  # the config is found; the checkpoint is not
    (tmp_path / "experiments" / "gr_tiny.yaml").write_text("{}\n")
    monkeypatch.setattr(demo, "CHECKOUT", None, raising=False)

    def synthesize(*args, **kwargs):
        raise AssertionError("synthesised a corpus before finding the checkpoint")

    monkeypatch.setattr(data_modules.synth, "synthesize", synthesize)
    # with --checkpoint, a corpus is there: the message alone is checked
    data = _fake_corpus(tmp_path / "data") if given else tmp_path / "data"
    argv = ["--data", str(data), "--out", str(tmp_path / "out")]
    assert demo.main(argv + (["--checkpoint", given] if given else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "repository root" in err[0] and "--checkpoint" in err[0], err
    assert "regrows" not in err[0]  # not the 68-minute advice for a file that is only elsewhere

    (tmp_path / "experiments" / "gr_tiny.yaml").unlink()
    assert demo.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "experiments/gr_tiny.yaml" in err[0] and "repository root" in err[0], err
