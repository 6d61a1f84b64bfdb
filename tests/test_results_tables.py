"""The AHAMask tables written by hand in the README, docs/testbed.md and the model cards quote the CSV
that `reproduce tiny` wrote for that testbed: every figure in a condition row must be in that row of
its `ahamask_table.csv` (to two decimals), so a copied-wrong or stale figure fails. The CSVs of the
testbeds in the tree are in `checkpoints/<name>/`, those of the testbeds that left it in
`docs/testbeds/<name>/`."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = ("with instruction", "no instruction", "random mask", "AHAMask")
NUMBER = re.compile(r"\d+(?:\.\d+)?")
# where a testbed's model card, ahamask_table.csv and probe.csv live
CARD_DIRS = ("checkpoints", "docs/testbeds")


def _card_dir(name: str) -> Path | None:
    return next((ROOT / d / name for d in CARD_DIRS if (ROOT / d / name / "ahamask_table.csv").exists()), None)


def _cards(filename: str) -> list[Path]:
    return sorted(p for d in CARD_DIRS for p in ROOT.glob(f"{d}/*/{filename}"))


def _csv_rows(checkpoint: Path) -> dict[str, dict[str, str]]:
    with open(checkpoint / "ahamask_table.csv", newline="") as f:
        return {row.pop("condition"): row for row in csv.DictReader(f)}


def _rounded(values: list[str]) -> set[str]:
    out = set()
    for v in values:
        try:
            out.add(f"{float(v):.2f}")
        except ValueError:
            pass  # "all" (heads of the unmasked rows)
    return out


def _first_table(section: str) -> list[list[str]]:
    rows, started = [], False
    for line in section.splitlines():
        if line.startswith("|"):
            started = True
            rows.append([c.strip().strip("*").strip() for c in line.strip("|").split("|")])
        elif started:
            break
    return rows


def _results_sections(doc: str) -> list[str]:
    """The sections of README.md's '## Results', and every '### ' section of docs/testbed.md."""
    text = (ROOT / doc).read_text()
    if doc == "README.md":
        text = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    return text.split("\n### ")[1:]


def _sections_with_their_checkpoint() -> list[tuple[str, str, Path]]:
    """(where, section text, card dir) for each results section of the README and docs/testbed.md,
    and each model card, that names a testbed with a committed ahamask_table.csv."""
    found = []
    for doc in ("README.md", "docs/testbed.md"):
        for section in _results_sections(doc):
            names = re.findall(r"(?:checkpoints|testbeds)/(tiny_lalm\w*)", section)
            dirs = [d for d in map(_card_dir, names) if d is not None]
            if dirs:
                found.append((f"{doc}: {section.splitlines()[0]}", section, dirs[0]))
    for card in _cards("MODEL_CARD.md"):
        if (card.parent / "ahamask_table.csv").exists():
            text = card.read_text()
            assert "## The AHAMask table" in text, f"{card}: no '## The AHAMask table' section"
            found.append((str(card.relative_to(ROOT)), text.split("## The AHAMask table", 1)[1], card.parent))
    return found


SECTIONS = _sections_with_their_checkpoint()


def test_every_committed_table_is_quoted_somewhere() -> None:
    quoted = {d for _, _, d in SECTIONS}
    assert {p.parent for p in _cards("ahamask_table.csv")} <= quoted
    assert len(SECTIONS) >= 18  # nine testbeds, each in the README or docs/testbed.md and in its card


@pytest.mark.parametrize("where, section, checkpoint", SECTIONS, ids=[w for w, _, _ in SECTIONS])
def test_hand_written_table_matches_the_csv(where: str, section: str, checkpoint: Path) -> None:
    rows = _csv_rows(checkpoint)
    table = _first_table(section)
    # columns headed "paper ..." quote the paper's numbers beside the testbed's: not from the CSV
    ours = [i for i, head in enumerate(table[0]) if i > 0 and not head.lower().startswith("paper")]
    checked = 0
    for cells in table:
        label = cells[0]
        condition = next((c for c in CONDITIONS if label.startswith(c)), None)
        if label.startswith("heads on"):
            allowed = _rounded([v for k, v in rows["AHAMask"].items() if k.endswith("/heads")])
        elif condition is not None:
            allowed = _rounded(list(rows[condition].values()))
        else:
            continue
        for figure in (m for i in ours if i < len(cells) for m in NUMBER.findall(cells[i])):
            assert f"{float(figure):.2f}" in allowed, (
                f"{where}: '{label}' quotes {figure}, not in {checkpoint.name}/ahamask_table.csv")
            checked += 1
    assert checked >= 10, f"{where}: found only {checked} figures to check"



PROBE_CARDS = [p.parent for p in _cards("probe.csv")]


@pytest.mark.parametrize("checkpoint", PROBE_CARDS, ids=[p.name for p in PROBE_CARDS])
def test_probe_table_in_the_card_matches_probe_csv(checkpoint: Path) -> None:
    """The card's probe table (rows: hidden state; cells: TASK instruction / none / mask) quotes probe.csv."""
    with open(checkpoint / "probe.csv", newline="") as f:
        csv_rows = {row["hidden_state"]: row for row in csv.DictReader(f)}
    text = (checkpoint / "MODEL_CARD.md").read_text()
    table = _first_table(text[text.index("| hidden state |"):])
    tasks = [re.match(r"(\w+):", cell).group(1).lower() for cell in table[0][1:]]
    checked = 0
    for cells in table[2:]:
        state = NUMBER.match(cells[0]).group(0)
        for task, cell in zip(tasks, cells[1:]):
            quoted = [f"{float(v):.2f}" for v in cell.split("/")]
            expected = [csv_rows[state][f"{task}_{c}"] for c in ("instruction", "none", "mask")]
            assert quoted == expected, f"{checkpoint.name}/MODEL_CARD.md: hidden state {state}, {task}: {quoted} != {expected}"
            checked += 1
    assert checked >= 6
