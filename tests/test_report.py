"""``ahamask report``: test results below folders as one table, each run named by its condition."""
from __future__ import annotations

import csv
from pathlib import Path


def test_report_collects_runs_below_a_directory(tmp_path, capsys):
    from ahamask_lightning.cli.main import main as ahamask
    from ahamask_lightning.results import write_results

    runs = {"study/test/with_instruction": {"use_mask": False, "prompt": "task"},
            "study/test/AHAMask": {"use_mask": True, "prompt": "none", "mask": "m.safetensors", "active_heads": 30},
            "study/prompts/variant_2": {"use_mask": False, "prompt": "variant:2"},
            # what the mask file recorded decides, not its name
            "study/test/restart": {"use_mask": True, "prompt": "none", "mask": "gr_random-restart.safetensors",
                                   "mask_random": False},
            "study/test/rnd": {"use_mask": True, "prompt": "none", "mask": "r.safetensors", "mask_random": True}}
    for i, (d, run) in enumerate(runs.items()):
        write_results(tmp_path / d, {"test/gr/acc": 50.0 + i}, [], run)
    assert ahamask(["report", str(tmp_path / "study"), "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    by_run = {Path(r["run"]).relative_to(tmp_path).as_posix(): r for r in rows}
    assert set(by_run) == set(runs)
    assert by_run["study/test/AHAMask"]["condition"] == "AHAMask" and by_run["study/test/AHAMask"]["active_heads"] == "30"
    assert by_run["study/prompts/variant_2"]["condition"] == "with instruction (variant:2)"
    assert by_run["study/test/restart"]["condition"] == "AHAMask" and by_run["study/test/rnd"]["condition"] == "random mask"
    assert by_run["study/test/with_instruction"]["gr/acc"] == "50.0"
    assert all(r["git"] for r in rows)  # the revision of each result
    assert ahamask(["report", str(tmp_path / "study" / "test" / "AHAMask")]) == 0
    assert "| AHAMask | 30 | 51.00 |" in capsys.readouterr().out
    assert ahamask(["report", str(tmp_path / "nothing_here")]) != 0
    capsys.readouterr()
    (tmp_path / "notes.json").write_text('{"metrics": {}}')
    assert ahamask(["report", str(tmp_path / "notes.json")]) == 2
    assert "notes.json: not a test_metrics.json" in capsys.readouterr().err


def test_report_columns_name_the_test_set_and_old_keys_stop_with_the_file(tmp_path, capsys):
    from ahamask_lightning.cli.main import main as ahamask
    from ahamask_lightning.results import write_results

    run = {"use_mask": False, "prompt": "task"}
    write_results(tmp_path / "new", {"test/gr/acc": 90.0, "test_ood/gr/acc": 70.0, "test_clean/asr/wer": 3.5}, [], run)
    assert ahamask(["report", str(tmp_path / "new"), "--format", "csv"]) == 0
    (row,) = csv.DictReader(capsys.readouterr().out.splitlines())
    assert (row["gr/acc"], row["gr/acc (ood)"], row["asr/wer (clean)"]) == ("90.0", "70.0", "3.5")
    write_results(tmp_path / "old", {"test/gr/acc": 90.0, "test/gr_test_ood/acc": 70.0}, [], run)
    assert ahamask(["report", str(tmp_path / "old")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "old/test_metrics.json" in err[0] and "'test/gr_test_ood/acc'" in err[0]



def test_records_on_disk_name_files_by_absolute_paths(tmp_path, monkeypatch):
    """A study's summary and a pruned model's spec are read later from other directories."""
    from ahamask_lightning.results import absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "fit").mkdir()
    (tmp_path / "fit" / "mask.safetensors").write_bytes(b"")
    (tmp_path / "src").mkdir()  # the repository root holds src/, and SRC is a task
    record = {"mask": "fit/mask.safetensors", "rows": [{"mask": "fit/mask.safetensors", "metric": 1.0}],
              "label": "src", "task": "src", "prompt": "none"}
    assert absolute_paths(record) == {"mask": str(tmp_path / "fit" / "mask.safetensors"),
                                      "rows": [{"mask": str(tmp_path / "fit" / "mask.safetensors"), "metric": 1.0}],
                                      "label": "src", "task": "src", "prompt": "none"}  # no path keys: they stay
