"""Bad input end to end: ``ahamask fit`` over a manifest holding every bad case of the data layer
among good samples, with two NaN losses injected; and a run of NaN losses that stops the fit."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import Run, ahamask_lines, fit_command, load_ckpt, mask_logits, write_config, write_wavs

from ahamask_lightning.cli.main import main as ahamask
from ahamask_lightning.data.manifest import REASONS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_data_bad_input import EXPECTED, build


@pytest.fixture(scope="module")
def mixed_manifest(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """The data layer's bad-case manifest (tests/test_data_bad_input.py) plus a missing field and
    20 good samples, shuffled in; returns it with the expected reject counts."""
    root = tmp_path_factory.mktemp("mixed")
    bad = Path(build(root))
    # surrogateescape: the bad-encoding line keeps its exact bytes through this rewrite
    bad_lines = [line for line in bad.read_text(errors="surrogateescape").splitlines() if line.strip()]
    bad_lines.append(json.dumps({"id": "noaudio", "task": "gr", "text": "Male"}))  # missing_field
    good = [json.dumps(r) for r in write_wavs(root, 20, seed=1)]
    good_ids = {"good", "rate8k", "sixch"}  # the unusual-but-good cases of build()
    lines, b = [], 0
    for i, g in enumerate(good):
        lines.append(g)
        while b < len(bad_lines) and (i % 2 == 1 or i >= 18):
            lines.append(bad_lines[b])
            b += 1
            break
    lines += bad_lines[b:]
    man = root / "mixed.jsonl"
    man.write_text("\n".join(lines) + "\n", errors="surrogateescape")
    expected: dict[str, int] = {"malformed_json": 1, "missing_field": 1}
    for sid, reason in EXPECTED.items():
        if reason is not None and sid not in good_ids:
            expected[reason] = expected.get(reason, 0) + 1
    return man, dict(sorted(expected.items()))


@pytest.mark.fault("every bad case of the data layer mixed among good samples, plus NaN losses in steps 3 and 4",
                   kept="fit finishes; counts by reason and 2 skipped steps reported; rejects file; no update "
                        "on a skipped step")
def test_fit_over_bad_input_finishes_and_reports(mixed_manifest, tmp_path):
    man, expected = mixed_manifest
    assert set(expected) == set(REASONS), "a reason of the data layer is not covered"
    root = tmp_path / "root"
    cfg = write_config(tmp_path / "fit.yaml", root, man, every=1, max_steps=-1)
    run = Run(fit_command(cfg, "--trainer.max_epochs", "1"), tmp_path / "faults", nan_at="2,3")
    assert run.wait() == 0, run.stderr()
    report = json.loads(next(root.rglob("fit_report.json")).read_text())
    # one whole epoch (every line read once); 23 good samples in batches of 2 -> at least 12 steps
    assert report["status"] == "finished" and report["epoch"] == 1 and report["global_step"] >= 12
    assert report["nonfinite_skipped"] == 2
    assert report["rejected"]["train"] == expected
    line = [x for x in ahamask_lines(run.stderr()) if x.startswith("ahamask: fit finished")]
    assert len(line) == 1 and "2 non-finite losses skipped" in line[0]
    assert f"{sum(expected.values())} samples rejected" in line[0] and "missing_field=1" in line[0]
    # the rejects file beside the logs names each bad line and its reason
    files = [Path(f) for f in report["rejects_files"]]
    assert files and all(f.parent == next(root.rglob("fit_report.json")).parent for f in files)
    entries = [json.loads(t) for f in files for t in f.read_text().splitlines()]
    counts: dict[str, int] = {}
    for e in entries:
        assert e["manifest"] == str(man) and e["stage"] == "train"
        counts[e["reason"]] = counts.get(e["reason"], 0) + 1
    assert counts == expected
    # a skipped step leaves the mask as it was; the next finite step moves it again
    step = lambda n: mask_logits(root / "checkpoints" / f"mask-step{n}.safetensors")
    assert torch.equal(step(3), step(2)) and torch.equal(step(4), step(3))
    assert not torch.equal(step(5), step(4)) and not torch.equal(step(2), step(1))


@pytest.mark.fault("NaN loss in every step from step 3 on (max_nonfinite_in_a_row=3)",
                   kept="fit stops in one line at step 5 with interrupted.ckpt = the last finite mask and "
                        "the counters")
def test_nonfinite_losses_in_a_row_stop_the_fit_with_a_checkpoint(good_corpus, tmp_path, monkeypatch, capsys):
    root = tmp_path / "root"
    cfg = write_config(tmp_path / "fit.yaml", root, good_corpus, every=1, max_steps=12, max_nonfinite=3)
    monkeypatch.setenv("AHAMASK_FAULT_DIR", str(tmp_path / "faults"))
    monkeypatch.setenv("AHAMASK_FAULT_NAN_AT", "2-")
    code = ahamask(["fit", "--config", str(cfg), "--trainer.logger", "false"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ahamask:")]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("ahamask: error: training stopped at step 5: 3 non-finite (NaN/inf) losses in a row")
    assert "checkpoint saved: " in err[0] and "interrupted.ckpt" in err[0]
    ckpt = load_ckpt(root / "checkpoints" / "interrupted.ckpt")
    assert ckpt["global_step"] == 5
    assert ckpt["ahamask_faults"] == {"nonfinite_in_a_row": 3, "nonfinite_total": 3}
    assert torch.equal(ckpt["state_dict"]["head_mask.logits"],
                       mask_logits(root / "checkpoints" / "mask-step2.safetensors"))
    report = json.loads((root / "fit_report.json").read_text())
    assert report["status"] == "stopped" and report["nonfinite_skipped"] == 3
