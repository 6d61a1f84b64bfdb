"""Tables from test results: one row per run directory, one column per ``test/<task>/<metric>``."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..results import read_results


def condition(run: dict) -> str:
    """The paper's row names: with instruction / no instruction / random mask / AHAMask."""
    if not run.get("use_mask", True):
        return "with instruction" if run.get("prompt") != "none" else "no instruction"
    mask = str(run.get("mask") or "")
    if "random" in Path(mask).name:
        return "random mask"
    return "AHAMask" if run.get("prompt") == "none" else f"AHAMask + {run.get('prompt')}"


def collect(run_dirs: list[str]) -> tuple[list[str], list[dict]]:
    rows, columns = [], []
    for d in run_dirs:
        path = Path(d)
        if not (path / "test_metrics.json").is_file() and not path.is_file():
            raise FileNotFoundError(f"{d}: no test_metrics.json (run `ahamask test` with results_dir there)")
        rec = read_results(path)
        row = {"run": str(d), "condition": condition(rec["run"]), "active_heads": rec["run"].get("active_heads")}
        for key, value in rec["metrics"].items():
            col = key.removeprefix("test/")
            row[col] = value
            if col not in columns:
                columns.append(col)
        rows.append(row)
    return ["run", "condition", "active_heads"] + sorted(columns), rows


def _fmt(v) -> str:
    if v is None or v == "":
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def to_markdown(columns: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
