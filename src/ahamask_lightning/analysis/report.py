"""Tables from test results: one row per test run, one column per task metric of each test set.

Columns are :func:`metric_column` of the parsed metric key (``evaluation.parse_metric_key``):
``gr/acc`` for ``test/gr/acc``, ``gr/acc (ood)`` for the named set ``test_ood/gr/acc``.

A RUN_DIR is a directory holding ``test_metrics.json`` (what ``ahamask test`` writes with
``--model.init_args.results_dir``), the file itself, or a directory above several of them (e.g. a
whole ``reproduce ablations`` output): then every ``test_metrics.json`` below it is one row.
Each row also names the git revision that produced it."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..evaluation import parse_metric_key
from ..results import read_results


def metric_column(task: str, metric: str, eval_set: str | None = None) -> str:
    """A table column for a task metric: ``gr/acc``, or ``gr/acc (ood)`` for the named test set ``ood``."""
    return f"{task}/{metric}" if eval_set is None else f"{task}/{metric} ({eval_set})"


def metric_lines(metrics: dict[str, Any], stage: str) -> list[str]:
    """One aligned ``column  value`` line per metric of ``stage`` in ``metrics`` (other keys skipped):
    what ``ahamask test``/``validate`` print instead of Lightning's per-DataLoader table, which
    repeats every epoch-level metric under every DataLoader."""
    rows = []
    for key, value in metrics.items():
        try:
            key_stage, task, metric, eval_set = parse_metric_key(key)
        except ValueError:
            continue
        if key_stage == stage:
            rows.append((metric_column(task, metric, eval_set), float(value)))
    width = max((len(column) for column, _ in rows), default=0)
    return [f"  {column:<{width}}  {value:9.2f}" for column, value in sorted(rows)]


def condition(run: dict) -> str:
    """The paper's row names: with instruction / no instruction / random mask / AHAMask."""
    if not run.get("use_mask", True):
        prompt = run.get("prompt")
        if prompt == "none":
            return "no instruction"
        return "with instruction" if prompt in (None, "task") else f"with instruction ({prompt})"
    mask = str(run.get("mask") or "")
    # what the mask file says (``mask random`` records its seed); results written before it was
    # recorded fall back to the file's name
    random_mask = run["mask_random"] if "mask_random" in run else "random" in Path(mask).name
    if random_mask:
        return "random mask"
    return "AHAMask" if run.get("prompt") == "none" else f"AHAMask + {run.get('prompt')}"


def result_files(run_dirs: list[str]) -> list[Path]:
    """The ``test_metrics.json`` files that ``run_dirs`` name or hold (in order, each once)."""
    found: list[Path] = []
    for d in run_dirs:
        path = Path(d)
        if path.is_file():
            found.append(path)
        elif (path / "test_metrics.json").is_file():
            found.append(path / "test_metrics.json")
        elif path.is_dir() and (below := sorted(path.rglob("test_metrics.json"))):
            found += below
        else:
            raise FileNotFoundError(f"{d}: no test_metrics.json below it (`ahamask test` writes one into --model.init_args.results_dir, else its log folder)")
    return list(dict.fromkeys(found))


def collect(run_dirs: list[str]) -> tuple[list[str], list[dict]]:
    rows, columns = [], []
    for path in result_files(run_dirs):
        rec = read_results(path)
        row = {"run": str(path.parent), "condition": condition(rec["run"]),
               "active_heads": rec["run"].get("active_heads"), "git": rec.get("git_revision")}
        for key, value in rec["metrics"].items():
            try:
                stage, task, metric, eval_set = parse_metric_key(key)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            col = metric_column(task, metric, eval_set) if stage == "test" else key
            row[col] = value
            if col not in columns:
                columns.append(col)
        rows.append(row)
    return ["run", "condition", "active_heads"] + sorted(columns) + ["git"], rows


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
