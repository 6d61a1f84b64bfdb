"""Analyses and the reproduce driver: figures, study bookkeeping, missing-weight stops, and the
TinyLALM table end to end (a random TinyLALM, two training steps, one test batch)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from ahamask_lightning import reproduce
from ahamask_lightning.analysis import ablations as ab
from ahamask_lightning.analysis import figures
from ahamask_lightning.experiment import CONDITIONS, Condition
from ahamask_lightning.masking import load_mask, save_mask
from ahamask_lightning.tasks import get_task

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 2000


def test_new_figures(tmp_path):
    figures.metric_vs_share([{"share": 0.1 * i, "metric": 10.0 * i} for i in range(1, 11)], str(tmp_path / "f4.png"),
                            "acc", {"AHAMask": 95.0, "with instruction": 90.0, "missing": None})
    figures.lambda_tradeoff([{"lambda": lam, "active": a, "metric": m} for lam, a, m in
                             [(1e-4, 300, 98.0), (0.0, 1500, 98.5), (1e-3, 80, 60.0)]], str(tmp_path / "f5.png"),
                            "acc", total_heads=1600)
    figures.prompt_spread({"gr": [90.0, 80.0, None, 95.0], "asr": [3.0, 5.0, 4.0], "empty": [None]},
                          str(tmp_path / "f2.png"), "metric", {"gr": 98.0})
    assert all(is_png(tmp_path / f) for f in ("f4.png", "f5.png", "f2.png"))


@pytest.mark.parametrize("key, expected", [
    ("test/gr/acc", ("gr", "acc", None)),
    ("test_ood/gr/acc", ("gr", "acc", "ood")),
    ("test/gr_asr/ifr", ("gr_asr", "ifr", None)),
    ("test_test-clean/gr_asr/wer", ("gr_asr", "wer", "test-clean")),
    ("test_other/asr/wer", ("asr", "wer", "other")),
])
def test_metric_keys(key, expected):
    assert ab.metric_entries({key: 1.0}) == [(*expected, 1.0)]


@pytest.mark.parametrize("key", ["train/loss", "test/nonsense/acc", "test/gr_test_ood/acc"])
def test_keys_of_no_task_name_the_file(key):
    with pytest.raises(ValueError, match=f"^runs/x/test_metrics.json: metric key '{key}'"):
        ab.metric_entries({"test/gr/acc": 1.0, key: 2.0}, "runs/x/test_metrics.json")


def test_metric_value_prefers_in_domain():
    m = {"test_ood/gr/acc": 60.0, "test/gr/acc": 90.0, "test/gr_asr/acc": 10.0}
    assert ab.metric_value(m, "gr") == 90.0 and ab.metric_value(m, "gr", eval_set="ood") == 60.0
    assert ab.metric_value({"test_other/asr/wer": 5.0, "test_clean/asr/wer": 2.0}, "asr") == 2.0
    assert ab.metric_value({"test_other/asr/wer": 5.0, "test_clean/asr/wer": 2.0}, "asr", eval_set="other") == 5.0
    assert ab.metric_value(m, "gr", eval_set="clean") is None
    assert ab.metric_value(m, "json") is None


class FakeRunner(ab.Runner):
    """Fits and tests without a model: the mask has fewer heads the larger lambda; the 'metric' is
    the share of heads on (or 50 + K for instruction wording K), so the bookkeeping can be checked."""

    def __init__(self) -> None:
        super().__init__("experiments/gr_tiny.yaml")
        self.calls: list[tuple[str, list[str]]] = []

    def fit(self, out: Path, extra: list[str] = ()) -> Path:
        self.calls.append(("fit", list(extra)))
        seed = int(extra[extra.index("--seed_everything") + 1]) if "--seed_everything" in extra else 0
        lam = float(extra[extra.index("--model.init_args.sparsity_lambda") + 1]) if extra and \
            "--model.init_args.sparsity_lambda" in extra else 0.0
        logits = torch.randn(6, 8, generator=torch.Generator().manual_seed(seed)) + 1.0 - 100 * lam
        path = Path(out) / "fit" / "mask.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_mask(path, logits, model_id="fake")
        return path

    def test(self, cond: Condition, out: Path, extra: list[str] = ()) -> dict:
        self.calls.append(("test", [cond.prompt, str(cond.use_mask), cond.mask or "", *extra]))
        active = load_mask(cond.mask).active() if cond.use_mask else None
        value = 100.0 * active / 48 if active is not None else 50.0 + int(cond.prompt.partition(":")[2] or 0)
        return {"metrics": {"test/gr/acc": value, "test_ood/gr/acc": value - 1}, "run": {"active_heads": active}}


def test_studies_and_figures_from_their_summaries(tmp_path):
    r = FakeRunner()
    base = ab.four_conditions(r, "gr", tmp_path / "conditions")
    assert list(base["conditions"]) == list(CONDITIONS)
    assert base["conditions"]["random mask"]["active_heads"] == base["active"]  # same size, other heads
    lam = ab.lambda_sweep(r, "gr", [0.0, 0.005, 0.01], tmp_path / "lambda", done={0.0: Path(base["mask"])})
    actives = [row["active"] for row in lam["rows"]]
    assert actives[0] == base["active"] and actives == sorted(actives, reverse=True)
    assert sum(c[0] == "fit" for c in r.calls) == 3  # lambda 0 reused
    seeds = ab.seed_study(r, "gr", [0, 1, 2], tmp_path / "seeds")
    inter = load_mask(seeds["intersection"]["mask"]).mask
    for row in seeds["rows"]:
        assert bool((inter <= load_mask(row["mask"]).mask).all())
    assert torch.tensor(seeds["jaccard"]).diagonal().eq(1).all()
    prog = ab.progressive(r, "gr", Path(base["mask"]), [0.25, 0.5, 1.0], tmp_path / "prog", {"AHAMask": 90.0})
    assert [row["active"] for row in prog["rows"]] == [12, 24, 48]
    assert [row["metric"] for row in prog["rows"]] == [25.0, 50.0, 100.0]
    n = len(get_task("gr").instructions)
    prompts = ab.prompt_sensitivity(r, "gr", tmp_path / "prompts", ahamask=95.0)
    assert [row["metric"] for row in prompts["rows"]] == [50.0 + k for k in range(n)]
    ood = ab.held_out(r, "gr", Path(base["mask"]), {"ood": "data/voxceleb/manifests/test/gr.jsonl"}, tmp_path / "ood")
    assert {row["condition"] for row in ood["rows"]} == {"with instruction", "AHAMask"}
    assert ["--data.init_args.test", '{"ood": ["data/voxceleb/manifests/test/gr.jsonl"]}'] == r.calls[-1][1][-2:]
    # each row reads its own named set, not the unnamed one
    assert [row["metric"] for row in ood["rows"]] == [50.0 - 1, 100.0 * base["active"] / 48 - 1]

    moved = ab.transfer(r, "gr", Path(base["mask"]), tmp_path / "transfer", "gr: instruct mask on base")
    assert moved["metric"] == 100.0 * base["active"] / 48 and r.calls[-1][1][:2] == ["none", "True"]
    for study in (base, lam, seeds, prog, prompts, ood, moved):  # every summary names the code that made it
        assert study["git_revision"] and {"python", "torch", "lightning"} <= set(study["versions"])

    written = figures.draw_all([tmp_path], tmp_path / "figs")
    names = [p.name for p in written]
    assert sorted(names) == sorted(["conditions_gr.png", "fig5_lambda_gr.png", "layer_profile_lambda_gr.png",
                                    "seeds_jaccard_gr.png", "fig4_progressive_gr.png", "fig2_prompts.png",
                                    "ood_gr.png", "transfer.png", "layer_profile_6x8.png"])
    assert all(is_png(p) for p in written)
    assert figures.draw_all([tmp_path / "prompts"], tmp_path / "few") == [tmp_path / "few" / "fig2_prompts.png"]


def test_grouped_bars_and_layer_profile_skip_nothing(tmp_path, monkeypatch):
    """What the figures draw: one bar per (group, series) with a value, one line per mask, every axis
    labelled with its unit."""
    import matplotlib.pyplot as plt

    seen = {}
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path, **kw: seen.setdefault(Path(path).name, fig))
    figures.grouped_bars({"in-domain": {"with instruction": 90.0, "AHAMask": 95.0},
                          "out-of-domain": {"with instruction": 70.0, "AHAMask": None}},
                         str(tmp_path / "bars.png"), figures.metric_label("acc"), "title", "test set")
    ax = seen["bars.png"].axes[0]
    heights = sorted(round(b.get_height(), 1) for b in ax.patches)
    assert heights == [70.0, 90.0, 95.0]  # the missing value is no bar, not a zero bar
    assert ax.get_ylabel() == "accuracy (%)" and ax.get_xlabel() == "test set"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["with instruction", "AHAMask"]
    masks = {"a": torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]]), "b": torch.zeros(2, 4)}
    figures.layer_profile(masks, str(tmp_path / "lp.png"))
    ax = seen["lp.png"].axes[0]
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[50.0, 100.0], [0.0, 0.0]]
    assert ax.get_ylabel() == "heads active (% of 4)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (6/8)", "b (0/8)"]
    figures.metric_vs_share([{"share": 0.0, "metric": 0.0}, {"share": 1.0, "metric": 80.0}], str(tmp_path / "p.png"),
                            "wer", {"AHAMask": 10.0}, own_share=0.25)
    ax = seen["p.png"].axes[0]
    assert ax.get_ylabel() == "WER (%, lower is better)" and list(ax.get_lines()[0].get_xdata()) == [0.0, 100.0]
    assert ax.collections[0].get_offsets().tolist() == [[25.0, 10.0]]  # the learned mask's own point


def test_quick_ablations_and_the_makefile_line(in_repo):
    parsed = reproduce.parser().parse_args(["ablations", "--out", "x", "--quick", "--set", "model.init_args.lr", "0.05"])
    args = reproduce.with_defaults(parsed)
    assert parsed.steps is None and parsed.test_batches is None  # the parsed arguments stay as given
    assert (args.steps, args.test_batches) == (120, 2)
    assert sorted(map(tuple, args.set)) == [("model.init_args.lr", "0.05"), ("model.init_args.warmup_steps", "10")]
    full = reproduce.parser().parse_args(["ablations", "--out", "x"])
    assert full.steps is None and full.set is None  # the YAML's own schedule
    assert full.fractions[0] == 0.0 and full.fractions[-1] == 1.0 and len(full.fractions) == 11
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("no make")
    line = subprocess.run(["make", "-n", "reproduce-ablations", "ABLATION_QUICK=1", "ABLATION_STEPS=7",
                           "ABLATION_ARGS=--only lambda"], capture_output=True, text=True, check=True).stdout
    cmd = " ".join(line.replace("\\\n", " ").split())
    assert "-m ahamask_lightning.reproduce ablations" in cmd and "--quick --steps 7 --only lambda" in cmd


def test_reproduce_ablations_end_to_end(synth_corpus, tmp_path, in_repo):
    """Every study through the real CLI on a random TinyLALM, as small as it goes: the wiring of
    lambda, seeds, intersection, progressive activation, wordings and the figures."""
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm

    random_tiny_lalm(["Male Female the quick brown fox"]).save(tmp_path / "ckpt")
    out = tmp_path / "abl"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    assert reproduce.main(["ablations", "--data", str(synth_corpus), "--checkpoint", str(tmp_path / "ckpt"),
                           "--out", str(out), "--quick", "--steps", "2", "--test-batches", "1",
                           "--lambdas", "0,0.5", "--seeds", "0,1", "--fractions", "0,1", "--variants", "2",
                           "--set", "data.init_args.batch_size", "4",
                           "--set", "model.init_args.generation", "{max_new_tokens: 3}"]) == 0
    summaries = {p.parent.name: json.loads(p.read_text()) for p in out.rglob("summary.json")}
    assert set(summaries) == {"conditions", "lambda", "seeds", "progressive", "prompts"}
    lam = summaries["lambda"]["rows"]
    assert [r["lambda"] for r in lam] == [0.0, 0.5] and lam[0]["mask"] == summaries["conditions"]["mask"]
    trained = json.loads((out / "lambda/lambda_0.5/fit/fit_record.json").read_text())
    assert "--model.init_args.sparsity_lambda" in trained["overrides"] and trained["git_revision"]
    assert float(load_mask(out / "lambda/lambda_0.5/fit/mask.safetensors").metadata["lambda"]) == 0.5
    cond = summaries["conditions"]
    assert [r["active"] for r in summaries["progressive"]["rows"]] == [0, cond["total"]]
    assert len(summaries["prompts"]["rows"]) == 2
    seeds = summaries["seeds"]["rows"]  # seed 0 is the conditions run's fit; seed 1 is fitted anew
    assert seeds[0]["mask"] == cond["mask"] != seeds[1]["mask"]
    inter = load_mask(summaries["seeds"]["intersection"]["mask"]).mask
    assert all(bool((inter <= load_mask(r["mask"]).mask).all()) for r in summaries["seeds"]["rows"])
    pngs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"conditions_gr.png", "fig5_lambda_gr.png", "fig4_progressive_gr.png", "seeds_jaccard_gr.png",
            "fig2_prompts.png", f"layer_profile_{cond['shape'][0]}x{cond['shape'][1]}.png"} <= pngs


def test_the_base_mask_is_reused_only_for_the_seed_it_was_fitted_with(tmp_path):
    """`reproduce ablations --seeds 1,2` must fit seeds 1 and 2; the conditions run's mask (fitted
    with the YAML's seed_everything 0) counts only for seed 0."""
    mask = tmp_path / "fit" / "mask.safetensors"
    mask.parent.mkdir()
    (mask.parent / "config.yaml").write_text("seed_everything: 0\ntrainer: {max_steps: 5}\n")
    assert ab.reusable_for_seeds(mask, [0, 1, 2]) == {0: mask}
    assert ab.reusable_for_seeds(mask, [1, 2]) == {}
    (mask.parent / "config.yaml").unlink()
    assert ab.reusable_for_seeds(mask, [0, 1]) == {}  # unknown seed: fit every seed afresh


def test_table_rows():
    s = {"task": "gr", "conditions": {
        c: {"metrics": {"test/gr/acc": 90.0 + i, "test_ood/gr/acc": 80.0 + i, "test/gr/other": 1.0},
            "active_heads": None if i < 2 else 30} for i, c in enumerate(CONDITIONS)}}
    columns, rows = ab.table_rows([s], reproduce.TABLE_METRICS)
    assert columns == ["condition", "gr/acc", "gr/acc (ood)", "gr/heads"]
    assert [r["condition"] for r in rows] == list(CONDITIONS)
    assert rows[0]["gr/heads"] == "all" and rows[3]["gr/heads"] == 30 and rows[3]["gr/acc"] == 93.0
    text = ab.conditions_markdown(columns, rows, {"gr/acc": (96.79, 0.0, 0.0, 98.05)})
    assert "| AHAMask | 93.00 (98.05) | 83.00 | 30 |" in text
    # one task on two models (Qwen2-Audio Instruct and Base): a column each, none overwritten
    base = {**s, "label": "gr_base", "conditions": {c: {**r, "metrics": {"test/gr/acc": 50.0}}
                                                    for c, r in s["conditions"].items()}}
    columns, rows = ab.table_rows([{**s, "label": "gr_instruct"}, base], reproduce.TABLE_METRICS)
    assert columns == ["condition", "gr/acc [gr_instruct]", "gr/acc (ood) [gr_instruct]", "gr/heads [gr_instruct]",
                       "gr/acc [gr_base]", "gr/heads [gr_base]"]
    assert (rows[3]["gr/acc [gr_instruct]"], rows[3]["gr/acc [gr_base]"]) == (93.0, 50.0)


def test_lambda_override_wins_over_the_yaml_callback(tmp_path, in_repo):
    from ahamask_lightning.cli.lightning import AHAMaskCLI
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm

    random_tiny_lalm().save(tmp_path / "ckpt")
    cli = AHAMaskCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     auto_configure_optimizers=False, run=False,
                     args=["--config", "experiments/gr_tiny.yaml", "--trainer.default_root_dir", str(tmp_path),
                           "--model.init_args.model.init_args.checkpoint", str(tmp_path / "ckpt"),
                           *ab.lambda_args(1e-4)])
    penalties = [c for c in cli.trainer.callbacks if type(c).__name__ == "SparsityPenalty"]
    assert cli.model.sparsity_lambda == 1e-4 and [p.lam for p in penalties] == [None]  # the YAML's, no lam
    penalties[0].on_fit_start(cli.trainer, cli.model)
    penalties[0].on_train_batch_start(cli.trainer, cli.model, None, 0)
    assert cli.model.sparsity_lambda == 1e-4  # what the loss is weighted by at every step


def test_table1_lists_exactly_what_is_missing(tmp_path, in_repo, monkeypatch, capsys):
    for var in ("WHISPER", "BEATS", "LLM", "CKPT"):
        monkeypatch.delenv(f"AHAMASK_SALMONN_{var}", raising=False)
    assert reproduce.main(["table1", "--tasks", "gr", "--out", str(tmp_path / "t1")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "reproduce table1: cannot start, missing:"
    assert [line.split()[0] for line in lines[1:5]] == ["whisper_path", "beats_path", "llm_path", "ckpt_path"]
    assert lines[5:] == [f"  data/librispeech/manifests/{s}/gr.cuts.jsonl.gz"
                         for s in ("train", "dev-clean", "test-clean")]
    # with the weights in place (empty stand-ins) only the data is missing; nothing was trained
    for var, path in (("WHISPER", "w"), ("LLM", "l"), ("BEATS", "b.pt"), ("CKPT", "c.pth")):
        if "." in path:
            (tmp_path / path).touch()
        else:
            (tmp_path / path).mkdir()
        monkeypatch.setenv(f"AHAMASK_SALMONN_{var}", str(tmp_path / path))
    assert reproduce.main(["table1", "--tasks", "asr", "--masks", str(tmp_path / "m"), "--out", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()[1:]
    assert lines == [f"  {tmp_path}/m/asr.safetensors", "  data/librispeech/manifests/test-clean/asr.cuts.jsonl.gz",
                     "  data/librispeech/manifests/test-other/asr.cuts.jsonl.gz"]
    assert not (tmp_path / "t1").exists()


def test_qwen2audio_lists_both_checkpoints(tmp_path, in_repo, monkeypatch, capsys):
    for var in ("AHAMASK_QWEN2AUDIO_INSTRUCT", "AHAMASK_QWEN2AUDIO_BASE", "AHAMASK_QWEN2AUDIO_PATH"):
        monkeypatch.delenv(var, raising=False)
    assert reproduce.main(["qwen2audio", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "base weights: --base or $AHAMASK_QWEN2AUDIO_BASE (not set)" in err
    assert "instruct weights: --instruct or $AHAMASK_QWEN2AUDIO_INSTRUCT (not set)" in err
    assert "data/voxceleb/manifests/test/asv.cuts.jsonl.gz" in err


def test_reproduce_tiny_end_to_end(synth_corpus, tmp_path, in_repo):
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm

    texts = [json.loads(line)["text"] for line in (synth_corpus / "manifests/train/asr.jsonl").read_text().splitlines()]
    random_tiny_lalm(texts + ["Male Female"]).save(tmp_path / "ckpt")
    out = tmp_path / "out"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    assert reproduce.main(["tiny", "--data", str(synth_corpus), "--checkpoint", str(tmp_path / "ckpt"),
                           "--tasks", "gr", "--steps", "2", "--test-batches", "1", "--out", str(out),
                           "--set", "data.init_args.batch_size", "4",
                           "--set", "model.init_args.generation", "{max_new_tokens: 4}"]) == 0
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["condition"] for r in rows] == list(CONDITIONS)
    assert {"gr/acc (ind)", "gr/acc (ood)", "gr/heads"} <= set(rows[0])  # the OOD GR column: held-out voices
    assert rows[0]["gr/heads"] == rows[1]["gr/heads"] == "all"
    assert rows[2]["gr/heads"] == rows[3]["gr/heads"] == str(load_mask(out / "gr/fit/mask.safetensors").active())
    assert all(0.0 <= float(r["gr/acc (ind)"]) <= 100.0 for r in rows)
    assert "| AHAMask |" in (out / "table.md").read_text()
    assert is_png(out / "jaccard.png")
    record = json.loads((out / "gr/fit/fit_record.json").read_text())  # the fit is stamped too
    assert record["mask"] == str(out / "gr/fit/mask.safetensors") and record["git_revision"] and record["versions"]


def test_reproduce_tiny_schedule_picks_the_long_yamls(tmp_path, in_repo, monkeypatch):
    """``--schedule tiny_long`` trains each task with ``<task>_tiny_long.yaml``, the default with
    ``<task>_tiny.yaml``; a schedule without YAMLs is refused by the parser."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"")
    data = tmp_path / "data"
    for split in ("train", "val", "test"):
        (data / "manifests" / split).mkdir(parents=True)
        for task in reproduce.TINY_TASKS:
            (data / "manifests" / split / f"{task}.jsonl").write_text("")
    used = []
    monkeypatch.setattr(reproduce, "run_table", lambda jobs, out, paper: used.extend(j[2].config for j in jobs) or [])
    monkeypatch.setattr(reproduce, "jaccard_png", lambda summaries, path: None)
    base = ["tiny", "--data", str(data), "--checkpoint", str(ckpt), "--tasks", "src,asv", "--out", str(tmp_path / "o")]
    assert reproduce.main(base + ["--schedule", "tiny_long"]) == 0
    assert reproduce.main(base) == 0
    assert used == ["experiments/src_tiny_long.yaml", "experiments/asv_tiny_long.yaml",
                    "experiments/src_tiny.yaml", "experiments/asv_tiny.yaml"]
    with pytest.raises(SystemExit):
        reproduce.main(base + ["--schedule", "tiny_short"])
    # without --tasks: every task that has a YAML for the schedule (the long one has three)
    used.clear()
    no_tasks = [a for a in base if a not in ("--tasks", "src,asv")]
    assert reproduce.main(no_tasks + ["--schedule", "tiny_long"]) == 0
    assert used == [f"experiments/{t}_tiny_long.yaml" for t in ("gr", "src", "asv")]
    used.clear()
    assert reproduce.main(no_tasks) == 0
    assert used == [f"experiments/{t}_tiny.yaml" for t in reproduce.TINY_TASKS]


def test_qwen2audio_transfer_runs_each_mask_on_the_other_variant(tmp_path, in_repo, monkeypatch):
    """Instruct -> Base and Base -> Instruct: each learned mask is tested with the other variant's
    YAML and weights (the paper: Qwen2-Audio masks do not transfer)."""
    weights = {v: tmp_path / v for v in ("instruct", "base")}
    for d in weights.values():
        d.mkdir()
    monkeypatch.setattr(reproduce, "manifests_of", lambda config, stages: [])
    trained, moved = [], []

    def four_conditions(runner, task, out, mask=None):
        trained.append((runner.config, runner.common[-1], task))
        return {"task": task, "mask": str(out / "fit/mask.safetensors"), "conditions": {}}

    def transfer(target, task, mask, out, label):
        moved.append((target.config, target.common[-1], task, mask.parent.parent.name, label))
        return {"label": label, "metric": 1.0}

    monkeypatch.setattr(reproduce.ab, "four_conditions", four_conditions)
    monkeypatch.setattr(reproduce.ab, "transfer", transfer)
    monkeypatch.setattr(reproduce, "write_table", lambda out, summaries, paper=None: "")
    assert reproduce.main(["qwen2audio", "--out", str(tmp_path / "out"), "--instruct", str(weights["instruct"]),
                           "--base", str(weights["base"])]) == 0
    assert trained == [("experiments/gr_qwen2audio_instruct.yaml", str(weights["instruct"]), "gr"),
                       ("experiments/asv_qwen2audio_base.yaml", str(weights["base"]), "asv")]
    assert moved == [("experiments/gr_qwen2audio_base.yaml", str(weights["base"]), "gr", "gr_instruct",
                      "gr: instruct mask on base"),
                     ("experiments/asv_qwen2audio_instruct.yaml", str(weights["instruct"]), "asv", "asv_base",
                      "asv: base mask on instruct")]
