"""`ahamask fit` then `ahamask test` from the experiment YAMLs, on tiny models of the real classes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ahamask_lightning.cli.main import main as ahamask
from ahamask_lightning.masking import load_mask


def _data_args(corpus: Path, task: str = "gr") -> list[str]:
    m = corpus / "manifests"
    return ["--data.init_args.train", f"[{m}/train/{task}.jsonl]", "--data.init_args.val", f"[{m}/val/{task}.jsonl]",
            "--data.init_args.test", f"[{m}/test/{task}.jsonl]"]


def test_qwen2audio_tiny_fit_then_test(synth_corpus, tmp_path, in_repo):
    cfg = "experiments/gr_qwen2audio_tiny.yaml"
    root = tmp_path / "run"
    assert ahamask(["fit", "--config", cfg, *_data_args(synth_corpus), "--trainer.default_root_dir", str(root),
                    "--trainer.enable_checkpointing", "true"]) == 0
    masks = list(root.rglob("mask.safetensors"))
    assert len(masks) == 1
    mask = load_mask(masks[0], shape=(2, 4))
    assert mask.metadata["model_id"] == "qwen2-audio-tiny-instruct"
    ckpts = list(root.rglob("*.ckpt"))
    assert ckpts, "no Lightning checkpoint written"
    ckpt = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == {"head_mask.logits", "head_mask.temperature"}
    assert ckpt["ahamask_model"] == {"model_id": "qwen2-audio-tiny-instruct", "layers": 2, "heads": 4}
    assert ckpts[0].stat().st_size < 200_000  # kilobytes: no frozen weights
    assert list(ckpts[0].parent.glob("mask-step*.safetensors")), "no mask file beside the checkpoint"

    out = tmp_path / "test"
    assert ahamask(["test", "--config", cfg, *_data_args(synth_corpus), "--model.init_args.mask", str(masks[0]),
                    "--model.init_args.results_dir", str(out), "--trainer.logger", "false"]) == 0
    rec = json.loads((out / "test_metrics.json").read_text())
    assert 0.0 <= rec["metrics"]["test/gr/acc"] <= 100.0
    assert rec["run"]["active_heads"] == mask.active() and rec["run"]["prompt"] == "none"
    assert rec["run"]["mask_random"] is False  # a learned mask: its file records no random seed
    assert "torch" in rec["versions"] and rec["git_revision"]
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert preds and all(p["instruction"] is None and p["reference"] in ("Male", "Female") for p in preds)


def test_checkpoint_of_another_model_is_refused(synth_corpus, tmp_path, in_repo, capsys):
    cfg = "experiments/gr_qwen2audio_tiny.yaml"
    root = tmp_path / "run"
    assert ahamask(["fit", "--config", cfg, *_data_args(synth_corpus), "--trainer.default_root_dir", str(root),
                    "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]) == 0
    ckpt = next(root.rglob("*.ckpt"))
    capsys.readouterr()
    code = ahamask(["test", "--config", cfg, *_data_args(synth_corpus), "--ckpt_path", str(ckpt),
                    "--model.init_args.model.init_args.tiny_layers", "3", "--trainer.logger", "false"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint belongs to" in err[0] and '"layers": 2' in err[0]


@pytest.mark.parametrize("override, expected", [
    (["--model.init_args.no_such_key", "1"], "no_such_key"),
    (["--model.init_args.lr", "fast"], "lr"),
    (["--model.init_args.model.class_path", "ahamask_lightning.models.NoSuchLALM"], "NoSuchLALM"),
    (["--trainer.default_root_dir", "/dev/null/run"], "trainer.default_root_dir"),
])
def test_config_errors_are_one_line_before_loading(override, expected, in_repo, capsys):
    with pytest.raises(SystemExit) if override[0] != "--trainer.default_root_dir" else _no_raise():
        code = ahamask(["fit", "--config", "experiments/gr_qwen2audio_tiny.yaml", *override])
        assert code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip() and not line.startswith("INFO")]
    assert len(err) == 1, err
    assert expected in err[0]


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_test_prints_each_sets_metrics_once(synth_corpus, tmp_path, in_repo, capsys):
    """Two named test sets: each metric is printed once, under its set's name, with where the results
    went; not Lightning's table, which repeats every metric under every DataLoader. No product tips."""
    m = synth_corpus / "manifests"
    out = tmp_path / "test"
    assert ahamask(["test", "--config", "experiments/gr_qwen2audio_tiny.yaml", "--data.init_args.test",
                    f"{{ind: [{m}/test/gr.jsonl], ood: [{m}/test_ood/gr.jsonl]}}", "--data.init_args.batch_size", "4",
                    "--model.init_args.use_mask", "false", "--model.init_args.results_dir", str(out),
                    "--trainer.logger", "false"]) == 0
    shown = capsys.readouterr()
    lines = shown.out.splitlines()
    metrics = json.loads((out / "test_metrics.json").read_text())["metrics"]
    head = lines.index(f"test results ({out / 'test_metrics.json'}):")
    for key, column in (("test_ind/gr/acc", "gr/acc (ind)"), ("test_ood/gr/acc", "gr/acc (ood)")):
        printed = [line.split() for line in lines[head + 1:] if line.startswith(f"  {column} ")]
        assert len(printed) == 1 and float(printed[0][-1]) == pytest.approx(metrics[key], abs=0.005)
    assert "DataLoader 0" not in shown.out and "Tip:" not in shown.out + shown.err
    n = sum(len((m / part / "gr.jsonl").read_text().splitlines()) for part in ("test", "test_ood"))
    batches = sum(-(-len((m / p / "gr.jsonl").read_text().splitlines()) // 4) for p in ("test", "test_ood"))
    assert n > 4 and f"test: {batches} batches in " in shown.out  # over both sets, not the last one's


def test_a_resume_at_an_epoch_end_trains_the_uninterrupted_mask(synth_corpus, tmp_path, in_repo):
    """Fit B stops at the end of epoch 1, where its last checkpoint is written and validation then
    runs; resumed, it ends with fit A's mask to the bit. Neither the validation nor the next
    epoch's start may draw from the RNG stream the mask noise comes from."""
    n = len((synth_corpus / "manifests" / "train" / "gr.jsonl").read_text().splitlines())
    epoch = -(-n // 16)
    every_step = json.dumps({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"every_n_train_steps": 1, "save_last": True}})
    common = ["fit", "--config", "experiments/gr_qwen2audio_tiny.yaml", *_data_args(synth_corpus),
              "--data.init_args.batch_size", "16", "--model.init_args.total_steps", str(2 * epoch),
              f"--trainer.callbacks+={every_step}"]

    def last_logits(root: Path) -> torch.Tensor:
        return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["head_mask.logits"]

    assert ahamask([*common, "--trainer.default_root_dir", str(tmp_path / "A"), "--trainer.max_steps",
                    str(2 * epoch)]) == 0
    for steps, resume in ((epoch, []), (2 * epoch, ["--ckpt_path", "last"])):
        assert ahamask([*common, "--trainer.default_root_dir", str(tmp_path / "B"), "--trainer.max_steps", str(steps),
                        *resume]) == 0
    assert n > 16 and torch.equal(last_logits(tmp_path / "B"), last_logits(tmp_path / "A"))
    # B's saved config reused for a new run in C: its checkpoints go to C, not to B's folder
    saved = sorted((tmp_path / "B").rglob("config.yaml"))[0]  # the first fit's (no ckpt_path)
    assert ahamask(["fit", "--config", str(saved), "--trainer.default_root_dir", str(tmp_path / "C"),
                    "--trainer.max_steps", "2"]) == 0
    assert (tmp_path / "C" / "checkpoints" / "last.ckpt").is_file()


def test_every_missing_manifest_is_named_in_one_line(tmp_path, in_repo, capsys):
    """Not only the first: a user with no data learns of the train and val manifests at once."""
    code = ahamask(["fit", "--config", "experiments/gr_tiny.yaml", "--data.init_args.train", f"[{tmp_path}/a.jsonl]",
                    "--data.init_args.val", f"[{tmp_path}/b.jsonl]", "--trainer.default_root_dir", str(tmp_path / "r")])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ahamask: error:")]
    assert code == 2 and len(lines) == 1
    assert f"data.init_args.train: {tmp_path}/a.jsonl" in lines[0] and f"data.init_args.val: {tmp_path}/b.jsonl" in lines[0]
