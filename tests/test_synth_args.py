"""`ahamask data synth` refuses counts that would write an empty or impossible corpus, in one line,
before it writes anything (an empty corpus' summary.json would count as present to make and the demo)."""
from __future__ import annotations

import pytest

from ahamask_lightning.cli.main import main as ahamask
from data_modules.synth import synthesize


@pytest.mark.parametrize("option, value, expected", [
    ("--n", "0", "--n: expected 3 or more in-domain utterances (val and test get one each), got 0"),
    ("--n", "-5", "--n: expected 3 or more in-domain utterances (val and test get one each), got -5"),
    ("--n", "2", "--n: expected 3 or more in-domain utterances (val and test get one each), got 2"),
    ("--scenes", "-1", "--scenes: expected 0 or more sound scenes, got -1"),
    ("--asr-extra", "-2", "--asr-extra: expected 0 or more extra ASR utterances, got -2"),
])
def test_synth_refuses_bad_counts_in_one_line_and_writes_nothing(tmp_path, capsys, option, value, expected):
    out = tmp_path / "corpus"
    assert ahamask(["data", "synth", "--out", str(out), option, value]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"ahamask: error: {expected}"]
    assert not out.exists()


@pytest.mark.parametrize("kwargs, name", [({"n": 0}, "n"), ({"n": 10, "n_scenes": -1}, "n_scenes"),
                                          ({"n": 10, "asr_extra": -1}, "asr_extra")])
def test_synthesize_refuses_bad_counts_before_writing(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        synthesize(tmp_path / "corpus", **kwargs)
    assert not (tmp_path / "corpus").exists()
