"""Test results on disk: ``test_metrics.json`` (metrics + run identity + versions) and predictions."""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .masking.io import git_revision

VERSIONED = ("torch", "torchaudio", "lightning", "transformers", "peft", "torchmetrics")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_results(out_dir: Path, metrics: dict[str, float], predictions: list[dict], run: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"metrics": metrics, "run": run, "git_revision": git_revision(), "versions": package_versions(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = out_dir / "test_metrics.json"
    path.write_text(json.dumps(record, indent=1))
    write_predictions(out_dir, predictions)
    return path


def write_predictions(out_dir: Path, predictions: list[dict]) -> Path:
    """``predictions.jsonl`` in ``out_dir``: one JSON object per sample, in the order given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "predictions.jsonl"
    with open(path, "w") as f:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    return path


def read_results(path: Path) -> dict:
    """A ``test_metrics.json`` (or the folder holding it); one-line ``ValueError`` naming the file
    when it is not one (not JSON, or without its ``metrics`` and ``run`` objects)."""
    path = Path(path)
    if path.is_dir():
        path = path / "test_metrics.json"
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a test_metrics.json ({exc})") from None
    if not (isinstance(record, dict) and all(isinstance(record.get(k), dict) for k in ("metrics", "run"))):
        raise ValueError(f"{path}: not a test_metrics.json (expected an object with 'metrics' and 'run')")
    return record


# Keys whose values are file or folder paths in the records written to disk: study summaries
# ("mask", "config") and a pruned model's adapter spec (its weight paths and feature cache).
PATH_KEYS = frozenset({"mask", "config", "checkpoint", "pretrained", "whisper_path", "beats_path", "llm_path",
                       "ckpt_path", "feature_cache"})


def absolute_paths(value: Any, key: str | None = None) -> Any:
    """``value`` (JSON-like) with every relative path under one of ``PATH_KEYS`` that exists here made
    absolute: records written to disk (a pruned model's spec, a study's summary) are read later from
    other directories. Only those keys: a task named ``src`` run in the repository root is no path."""
    if isinstance(value, dict):
        return {k: absolute_paths(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [absolute_paths(v, key) for v in value]
    if key in PATH_KEYS and isinstance(value, str) and value and not os.path.isabs(value) and os.path.exists(value):
        return os.path.abspath(value)
    return value
