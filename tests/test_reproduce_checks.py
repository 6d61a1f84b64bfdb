"""The reproduce driver's checks before hours of runs: given masks tested from an empty output
folder, each Qwen2-Audio variant's own weights, bad ``--jobs`` and ``--only`` values, every missing
file listed at once; and the figures it draws from several studies."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ahamask_lightning import reproduce
from ahamask_lightning.analysis import ablations as ab
from ahamask_lightning.analysis import figures
from ahamask_lightning.experiment import Condition
from ahamask_lightning.masking import load_mask, save_mask

QWEN_VARIABLES = ("AHAMASK_QWEN2AUDIO_INSTRUCT", "AHAMASK_QWEN2AUDIO_BASE", "AHAMASK_QWEN2AUDIO_PATH")


class GivenMaskRunner(ab.Runner):
    """Tests without a model (the metric: the share of heads on); fitting is an error here."""

    def __init__(self) -> None:
        super().__init__("experiments/gr_tiny.yaml")
        self.tested: list[str] = []

    def fit(self, out: Path, extra: list[str] = ()) -> Path:
        raise AssertionError("a given mask is tested, not trained")

    def test(self, cond: Condition, out: Path, extra: list[str] = ()) -> dict:
        self.tested.append(cond.name)
        active = load_mask(cond.mask).active() if cond.use_mask else None
        return {"metrics": {"test/gr/acc": 1.0 if active is None else float(active)}, "run": {"active_heads": active}}


def test_a_given_mask_is_tested_from_an_output_folder_that_does_not_exist_yet(tmp_path):
    """``table1 --released/--masks/--official``: no fit creates the task's folder before the random mask goes there."""
    save_mask(tmp_path / "given.safetensors", torch.randn(6, 8, generator=torch.Generator().manual_seed(0)))
    runner = GivenMaskRunner()
    out = tmp_path / "table" / "gr"
    summary = ab.four_conditions(runner, "gr", out, mask=tmp_path / "given.safetensors")
    assert len(runner.tested) == 4 and (out / "random_mask.safetensors").is_file()
    assert summary["conditions"]["random mask"]["active_heads"] == summary["active"]
    assert json.loads((out / "summary.json").read_text())["kind"] == "four_conditions"


def test_base_ablations_do_not_take_the_instruct_weights_of_the_adapters_variable(tmp_path, in_repo, monkeypatch,
                                                                                  capsys):
    for var in QWEN_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "Qwen2-Audio-7B-Instruct").mkdir()
    monkeypatch.setenv("AHAMASK_QWEN2AUDIO_PATH", str(tmp_path / "Qwen2-Audio-7B-Instruct"))  # as the README sets it
    assert reproduce.main(["ablations", "--family", "qwen2audio_base", "--task", "asv", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Qwen2-Audio-7B base weights: --pretrained or $AHAMASK_QWEN2AUDIO_BASE (not set)" in err
    assert reproduce.main(["ablations", "--family", "qwen2audio_instruct", "--out", str(tmp_path)]) == 2
    assert "weights" not in capsys.readouterr().err  # Instruct still finds them there (only data is missing)
    assert reproduce.qwen_weights("base", None) is None
    monkeypatch.setenv("AHAMASK_QWEN2AUDIO_BASE", "/models/base")
    assert reproduce.qwen_weights("base", None) == "/models/base"
    assert reproduce.qwen_weights("base", "/given") == "/given"


@pytest.mark.parametrize("job", ["instrct:gr", "gr"])
def test_a_mistyped_job_is_one_line(job, tmp_path, capsys):
    assert reproduce.main(["qwen2audio", "--jobs", job, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"reproduce qwen2audio: --jobs '{job}': expected variant:task with variant instruct or base\n")


def test_an_unknown_study_is_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["ablations", "--only", "lamda,seeds", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "--only: unknown lamda; expected some of lambda,seeds,progressive,prompts,ood" in capsys.readouterr().err


def test_mask_files_are_listed_with_the_missing_weights(tmp_path, in_repo, monkeypatch, capsys):
    for var in ("WHISPER", "BEATS", "LLM", "CKPT"):
        monkeypatch.delenv(f"AHAMASK_SALMONN_{var}", raising=False)
    assert reproduce.main(["table1", "--tasks", "gr", "--masks", str(tmp_path / "m"), "--out", str(tmp_path)]) == 2
    assert f"  {tmp_path}/m/gr.safetensors" in capsys.readouterr().err.splitlines()
    assert reproduce.main(["table1", "--tasks", "gr", "--official", str(tmp_path / "o"), "--out", str(tmp_path)]) == 2
    assert f"  {tmp_path}/o/gender_librispeech.pth" in capsys.readouterr().err.splitlines()
    assert not (tmp_path / "official_masks").exists()  # nothing converted before the run can start


def test_the_out_of_domain_study_runs_for_gr_only(tmp_path, in_repo, monkeypatch):
    """Its test sets are GR sets: another task's mask and YAML there would only cost test passes."""
    monkeypatch.setattr(reproduce, "salmonn_missing", lambda config: [])
    monkeypatch.setattr(reproduce, "manifests_of", lambda config, stages: [])
    (tmp_path / "ood.jsonl").touch()
    monkeypatch.setattr(ab, "OOD_GR", {"tedlium": str(tmp_path / "ood.jsonl")})
    studies = []
    monkeypatch.setattr(ab, "four_conditions", lambda runner, task, out: {
        "mask": "m.safetensors", "conditions": {"AHAMask": {"metrics": {}}, "with instruction": {"metrics": {}}}})
    monkeypatch.setattr(ab, "held_out", lambda runner, task, *rest: studies.append(task))
    monkeypatch.setattr(figures, "draw_all", lambda runs, out: [])
    for task in ("asr", "gr"):
        assert reproduce.main(["ablations", "--family", "salmonn", "--task", task, "--only", "ood",
                               "--out", str(tmp_path / task)]) == 0
    assert studies == ["gr"]


def test_prompt_studies_of_one_task_from_two_runs_are_two_boxes(tmp_path, monkeypatch):
    for run, value, star in (("tiny_run", 10.0, 90.0), ("salmonn_run", 80.0, 99.0)):
        folder = tmp_path / run / "prompts"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({
            "kind": "prompts", "task": "gr", "metric": "acc", "ahamask": star,
            "rows": [{"variant": k, "metric": value} for k in range(3)]}))
    drawn = {}
    monkeypatch.setattr(figures, "prompt_spread", lambda per_task, path, ylabel, ahamask: drawn.update(
        per_task=per_task, ahamask=ahamask))
    figures.draw_all([tmp_path], tmp_path / "figures")
    assert drawn["per_task"] == {"gr": [80.0] * 3, "gr (tiny_run)": [10.0] * 3}
    assert drawn["ahamask"] == {"gr": 99.0, "gr (tiny_run)": 90.0}


def test_the_prompt_figure_takes_a_nan_metric(tmp_path):
    path = tmp_path / "prompts.png"
    figures.prompt_spread({"asr": [float("nan"), 5.0], "gr": [90.0]}, str(path), "metric", {"gr": 95.0})
    assert path.is_file() and path.stat().st_size > 2000
