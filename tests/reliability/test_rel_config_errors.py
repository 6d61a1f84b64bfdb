"""Config and path errors: one clear line naming the key or file, before any model is built."""
from __future__ import annotations

import pytest
from conftest import REPO

from ahamask_lightning.cli.main import main as ahamask


@pytest.fixture
def no_model_build(monkeypatch):
    import ahamask_lightning.models.qwen2_audio as qa

    def refuse(*a, **k):
        raise AssertionError("the model was built before the error was reported")

    monkeypatch.setattr(qa, "tiny_config", refuse)


CASES = [
    ("unknown key (adapter)", ["--model.init_args.model.init_args.no_such_key", "1"],
     "--model.init_args.model.init_args.no_such_key: Option 'no_such_key' is not accepted"),
    ("wrong type", ["--data.init_args.batch_size", "two"], "batch_size"),
    ("missing manifest", ["--data.init_args.train", "[/nonexistent/train.jsonl]"],
     "data.init_args.train: /nonexistent/train.jsonl: manifest file not found"),
    ("unwritable results_dir", ["--model.init_args.results_dir", "{tmp}/file/sub"], "model.init_args.results_dir"),
    ("unwritable default_root_dir", ["--trainer.default_root_dir", "/proc/ahamask-run"], "trainer.default_root_dir"),
    ("missing ckpt_path", ["--ckpt_path", "{tmp}/none.ckpt"], "none.ckpt: checkpoint file not found"),
    ("truncated ckpt_path", ["--ckpt_path", "{tmp}/cut.ckpt"], "cut.ckpt: not a readable checkpoint"),
]


@pytest.mark.fault("config and path errors (unknown key, wrong type, missing manifest / checkpoint, truncated "
                   "checkpoint, unwritable output dirs)", kept="one line naming the key or file; no model built")
@pytest.mark.parametrize("name, override, expected", CASES, ids=[c[0] for c in CASES])
def test_config_error_is_one_line_before_the_model(name, override, expected, reference, tmp_path, capsys,
                                                   no_model_build):
    (tmp_path / "file").write_text("x")
    (tmp_path / "cut.ckpt").write_bytes((reference["ckdir"] / "last.ckpt").read_bytes()[:300])
    args = [a.format(tmp=tmp_path) for a in override]
    root = [] if "--trainer.default_root_dir" in args else ["--trainer.default_root_dir", str(tmp_path / "r")]
    try:
        code = ahamask(["fit", "--config", str(reference["config"]), *root, *args])
    except SystemExit as exc:  # the parser's errors exit from inside LightningCLI
        code = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ahamask:")]
    assert code == 2 and len(err) == 1, err
    assert expected.format(tmp=tmp_path) in err[0]


@pytest.mark.fault("missing weight paths (TinyLALM checkpoint, Qwen2-Audio pretrained)",
                   kept="one line naming the missing path, before any weight is read")
@pytest.mark.parametrize("config, override, expected", [
    ("experiments/gr_tiny.yaml", ["--model.init_args.model.init_args.checkpoint", "/nonexistent/tiny_lalm"],
     "/nonexistent/tiny_lalm"),
    ("experiments/gr_qwen2audio_instruct.yaml", ["--model.init_args.model.init_args.pretrained",
                                                 "/nonexistent/qwen2audio"], "/nonexistent/qwen2audio"),
], ids=["tiny_lalm", "qwen2audio"])
def test_missing_weight_path_is_one_line(config, override, expected, good_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    data = [a for k in ("train", "val", "test") for a in (f"--data.init_args.{k}", f"[{good_corpus}]")]
    try:
        code = ahamask(["fit", "--config", config, "--trainer.default_root_dir", str(tmp_path), *data, *override])
    except SystemExit as exc:
        code = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ahamask:")]
    assert code == 2 and len(err) == 1, err
    assert expected in err[0]


@pytest.mark.fault("test: a named test set whose manifest is missing; training manifests that are absent",
                   kept="the missing test manifest is one line naming its set, before any model is built; "
                        "absent training manifests do not stop a test")
def test_test_checks_the_manifests_it_reads(reference, good_corpus, tmp_path, capsys, monkeypatch):
    common = ["test", "--config", str(reference["config"]), "--trainer.default_root_dir", str(tmp_path / "r"),
              "--model.init_args.results_dir", str(tmp_path / "results"), "--model.init_args.use_mask", "false",
              "--data.init_args.train", "[/nonexistent/train.jsonl]", "--data.init_args.val", "[/nonexistent/val.jsonl]"]
    with monkeypatch.context() as patch:
        import ahamask_lightning.models.qwen2_audio as qa

        patch.setattr(qa, "tiny_config", lambda *a, **k: pytest.fail("the model was built before the error"))
        code = ahamask([*common, "--data.init_args.test", f"{{ind: [{good_corpus}], ood: [/nonexistent/ood.jsonl]}}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ahamask:")]
    assert code == 2 and len(err) == 1, err
    assert "data.init_args.test.ood: /nonexistent/ood.jsonl: manifest file not found" in err[0]
    assert ahamask([*common, "--data.init_args.test", f"[{good_corpus}]", "--trainer.limit_test_batches", "1"]) == 0
    assert (tmp_path / "results" / "test_metrics.json").is_file()
