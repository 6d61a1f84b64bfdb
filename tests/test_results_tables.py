"""The AHAMask tables written by hand in the README and the model cards quote the CSV that
`reproduce tiny` wrote for that checkpoint: every figure in a condition row must be in that row of
`checkpoints/<name>/ahamask_table.csv` (to two decimals), so a copied-wrong or stale figure fails."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = ("with instruction", "no instruction", "random mask", "AHAMask")
NUMBER = re.compile(r"\d+(?:\.\d+)?")


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


def _sections_with_their_checkpoint() -> list[tuple[str, str, Path]]:
    """(where, section text, checkpoint dir) for each README results section and model card that
    names a checkpoint with a committed ahamask_table.csv."""
    found = []
    readme = (ROOT / "README.md").read_text()
    results = readme.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    for section in results.split("\n### ")[1:]:
        names = re.findall(r"checkpoints/(tiny_lalm\w*)", section)
        dirs = [ROOT / "checkpoints" / n for n in names if (ROOT / "checkpoints" / n / "ahamask_table.csv").exists()]
        if dirs:
            found.append((f"README: {section.splitlines()[0]}", section, dirs[0]))
    for card in sorted(ROOT.glob("checkpoints/*/MODEL_CARD.md")):
        if (card.parent / "ahamask_table.csv").exists():
            text = card.read_text()
            assert "## The AHAMask table" in text, f"{card}: no '## The AHAMask table' section"
            found.append((str(card.relative_to(ROOT)), text.split("## The AHAMask table", 1)[1], card.parent))
    return found


SECTIONS = _sections_with_their_checkpoint()


def test_every_committed_table_is_quoted_somewhere() -> None:
    quoted = {d for _, _, d in SECTIONS}
    assert {p.parent for p in ROOT.glob("checkpoints/*/ahamask_table.csv")} <= quoted
    assert len(SECTIONS) >= 6  # three testbeds, each in the README and in its card


@pytest.mark.parametrize("where, section, checkpoint", SECTIONS, ids=[w for w, _, _ in SECTIONS])
def test_hand_written_table_matches_the_csv(where: str, section: str, checkpoint: Path) -> None:
    rows = _csv_rows(checkpoint)
    table = _first_table(section)
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
        for figure in (m for cell in cells[1:] for m in NUMBER.findall(cell)):
            assert f"{float(figure):.2f}" in allowed, (
                f"{where}: '{label}' quotes {figure}, not in {checkpoint.name}/ahamask_table.csv")
            checked += 1
    assert checked >= 10, f"{where}: found only {checked} figures to check"



PROBE_CARDS = sorted(p.parent for p in ROOT.glob("checkpoints/*/probe.csv"))


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
