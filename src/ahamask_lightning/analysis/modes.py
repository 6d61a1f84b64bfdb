"""Which task's answer format each prediction takes: the task a mask actually triggers, per input.

Accuracy alone cannot tell a mask that triggers the right task with poor skill from one that
triggers another task. This tool sorts every prediction of a ``predictions.jsonl`` (written by
``ahamask test``) into a mode (the label set of a classification task it names, a sound
caption, a JSON or ``|`` composite, free text, empty) and cross-tabulates modes by reference.

    python -m ahamask_lightning.analysis.modes runs/.../test/AHAMask/predictions.jsonl
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..tasks import get_task

CLASSIFICATION_TASKS = ("gr", "src", "asv")
# the sound nouns of SynthSpeech's scene captions (data_modules/synth/scenes.py)
CAPTION_WORDS = ("beep", "buzz", "hiss", "noise", "rumble", "note", "chirp")


def answer_mode(prediction: str, tasks: Sequence[str] = CLASSIFICATION_TASKS,
                caption_words: Iterable[str] = CAPTION_WORDS) -> str:
    """The task whose label the prediction is (exactly), else caption / json / composite / text / empty."""
    text = prediction.strip()
    if not text:
        return "empty"
    for name in tasks:
        labels = {label.lower() for label in get_task(name).labels or ()}
        if text.lower().rstrip(".") in labels:
            return name
    if text.startswith("{"):
        return "json"
    if "|" in text:
        return "composite"
    words = set(text.lower().split())
    if words & set(caption_words):
        return "caption"
    return "text"


def mode_table(rows: Iterable[dict]) -> dict[str, collections.Counter]:
    """reference -> Counter of answer modes."""
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rows:  # infer and predict outputs have no reference: their answers count under "-"
        table[str(row.get("reference", "-"))][answer_mode(str(row["prediction"]))] += 1
    return dict(table)


def format_mode_table(table: dict[str, collections.Counter]) -> str:
    modes = sorted({m for counts in table.values() for m in counts})
    lines = ["| reference | " + " | ".join(modes) + " | n |", "|" + "---|" * (len(modes) + 2)]
    total: collections.Counter = collections.Counter()
    for ref in sorted(table):
        counts = table[ref]
        total.update(counts)
        lines.append(f"| {ref} | " + " | ".join(str(counts[m]) for m in modes) + f" | {sum(counts.values())} |")
    lines.append("| all | " + " | ".join(str(total[m]) for m in modes) + f" | {sum(total.values())} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ahamask_lightning.analysis.modes", description=__doc__.split("\n")[0])
    p.add_argument("predictions", nargs="+", help="predictions.jsonl files written by `ahamask test`")
    args = p.parse_args(argv)
    missing = [path for path in args.predictions if not Path(path).is_file()]
    if missing:
        print(f"{p.prog}: error: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    for path in args.predictions:
        rows = []
        for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
            row = _json_or_none(line) if line.strip() else {}
            if row == {}:
                continue
            if not isinstance(row, dict) or "prediction" not in row:
                print(f"{p.prog}: error: {path}:{number}: expected a JSON object with 'prediction' "
                      "(a predictions.jsonl of ahamask test, predict or infer)", file=sys.stderr)
                return 2
            rows.append(row)
        print(f"{path} ({len(rows)} predictions)\n{format_mode_table(mode_table(rows))}\n")
    return 0


def _json_or_none(line: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
