"""TinyLALM pretraining: a resumed fit takes its run-only options (``out_dir``, ``max_new_tokens``)
from its own command line, not from the checkpoint; the export CLI reports bad input in one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from ahamask_lightning.cli.main import main as ahamask

SR = 16000
SENTENCES = ["the cat sat", "a dog ran far", "my hat is red", "our bird can sing", "every fish swims",
             "that cow is slow"]
SPEAKERS = ["en+m1@p50", "en+f2@p55"]
# a pretraining TinyLALM small enough to fit in a test (as tests/test_tiny_lalm.py)
TINY = {"enc_dim": 32, "enc_layers": 1, "enc_heads": 2, "skip": True, "llm": {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 2, "max_position_embeddings": 256}}


def _corpus(root: Path) -> tuple[Path, Path]:
    """A few noise clips with asr and gr lines (the utterance ids give CTC transcripts and speakers)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    asr, gr = [], []
    for i, text in enumerate(SENTENCES):
        seconds = 0.8 + 0.1 * i
        sf.write(str(root / f"u{i}.wav"), rng.normal(0, 0.1, round(SR * seconds)).astype("float32"), SR)
        meta = {"utt": f"u{i}", "speaker": SPEAKERS[i % 2]}
        asr.append({"id": f"asr-u{i}", "audio": f"u{i}.wav", "task": "asr", "text": text, "duration": seconds,
                    "meta": meta})
        gr.append({**asr[-1], "id": f"gr-u{i}", "task": "gr", "text": ("Male", "Female")[i % 2]})
    for name, lines in (("asr", asr), ("gr", gr)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root / "asr.jsonl", root / "gr.jsonl"


def _config(tmp_path: Path) -> Path:
    asr, gr = _corpus(tmp_path / "data")
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "precision": "32-true", "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 0,
                    "default_root_dir": str(tmp_path / "run"),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"save_last": True, "every_n_train_steps": 1, "save_top_k": 0}}]},
        "model": {"class_path": "ahamask_lightning.pretrain.TinyLALMPretrain",
                  "init_args": {"tokenizer_manifests": [str(asr)], "out_dir": str(tmp_path / "export_first"),
                                "vocab_size": 120, "config": TINY, "lr": 0.01, "warmup_steps": 0,
                                "max_new_tokens": 4, "ctc_weight": 0.3, "speaker_weight": 0.3}},
        "data": {"class_path": "ahamask_lightning.data.ManifestDataModule",
                 "init_args": {"train": [str(asr), str(gr)], "val": [str(asr)], "batch_size": 4, "num_workers": 0,
                               "min_seconds": 0.5, "max_seconds": 12.0}},
    }
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_resumed_pretraining_run_exports_to_its_own_out_dir(tmp_path):
    config = _config(tmp_path)
    first, second = tmp_path / "export_first", tmp_path / "export_resumed"
    assert ahamask(["fit", "--config", str(config)]) == 0
    exported = (first / "model.safetensors").read_bytes()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ahamask(["fit", "--config", str(config), "--ckpt_path", str(last), "--trainer.max_steps", "3",
                    "--model.init_args.out_dir", str(second), "--model.init_args.max_new_tokens", "7"]) == 0
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 3  # it did resume
    assert (second / "model.safetensors").is_file(), "the resumed run did not export to its own out_dir"
    assert (first / "model.safetensors").read_bytes() == exported  # the first run's export is left alone
    assert (second / "model.safetensors").read_bytes() != exported  # one more step of training
    stored = resumed["hyper_parameters"]
    assert not {"out_dir", "max_new_tokens"} & set(stored)  # run-only: not applied over a resume's command line
    assert stored["lr"] == 0.01 and stored["ctc_weight"] == 0.3 and stored["config"] == TINY  # the maths stay


def _export(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    from ahamask_lightning.pretrain import main as export_main  # python -m ahamask_lightning.pretrain

    code = export_main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_the_export_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    mask_ckpt = tmp_path / "mask.ckpt"  # loads, but is another module's checkpoint
    torch.save({"state_dict": {"head_mask.logits": torch.zeros(2, 4)}, "hyper_parameters": {"estimator": "logistic"}},
               mask_ckpt)
    cases = [(tmp_path / "missing.ckpt", "not found"), (text, "not a readable checkpoint"),
             (mask_ckpt, "not a TinyLALM pretraining checkpoint"), (tmp_path, "a folder")]
    for path, expected in cases:
        code, err = _export([str(path), str(out)], capsys)
        assert code == 2, path
        assert len(err) == 1 and err[0].startswith("ahamask: error: ") and str(path) in err[0], err
        assert expected in err[0], err
    assert not out.exists()


def test_python_m_pretrain_prints_no_traceback(tmp_path):
    missing = tmp_path / "nope.ckpt"
    done = subprocess.run([sys.executable, "-m", "ahamask_lightning.pretrain", str(missing), str(tmp_path / "out")],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"ahamask: error: {missing}: checkpoint file not found"]
