"""``max_batch_seconds``: a batch's padded seconds (cuts x longest cut) never exceed the budget.

Lhotse's batcher adds a cut before it checks the budget against the longest cut seen so far, so a
short first cut followed by longer ones of the same length bucket (edges double: 2, 4, 8, 16 s)
used to give batches up to about twice the budget.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ahamask_lightning.data import ManifestDataModule

RATE = 8000  # small files; the loader resamples to 16 kHz
FRAME = 1 / 16000


def corpus(root: Path, lengths: list[float]) -> str:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate(lengths):
        sf.write(root / f"s{i}.wav", (0.1 * rng.standard_normal(round(seconds * RATE))).astype("float32"), RATE)
        rows.append({"id": f"s{i}", "audio": f"s{i}.wav", "task": "gr", "text": "Male"})
    man = root / "m.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(man)


def padded(batch: list[dict]) -> float:
    return len(batch) * max(s["audio"].numel() for s in batch) / 16000


def ids(batches: list[list[dict]]) -> list[str]:
    return [s["id"] for b in batches for s in b]


@pytest.mark.parametrize("lengths, budget", [
    ([2.1, 3.9, 2.1, 3.9], 6.0),  # bucket (2, 4]: 2 x 3.9 s went into one batch
    ([8.05, 8.05, 8.05, 15.9], 32.5),  # bucket (8, 16]: 4 x 15.9 s went into one batch
])
def test_lengths_rising_within_a_bucket_stay_within_the_budget(tmp_path: Path, lengths: list[float],
                                                               budget: float) -> None:
    man = corpus(tmp_path, lengths)
    dm = ManifestDataModule(train=man, val=man, known_tasks={"gr"}, max_batch_seconds=budget, shuffle_buffer=1)
    for batches in (list(dm.val_dataloader()[0]), list(dm.train_dataloader())):
        assert sorted(ids(batches)) == sorted(f"s{i}" for i in range(len(lengths)))
        assert max(padded(b) for b in batches) <= budget + FRAME


def test_every_batch_within_the_budget_and_resume_stays_exact(tmp_path: Path) -> None:
    """Mixed lengths, shuffled over two epochs and in evaluation order; a clip longer than the
    budget is a batch of its own; a mid-epoch resume continues the same plan exactly."""
    rnd = random.Random(4)
    lengths = [round(rnd.uniform(1.0, 7.5), 2) for _ in range(30)] + [9.5]  # 9.5 s > the 9 s budget
    man = corpus(tmp_path, lengths)

    def dm() -> ManifestDataModule:
        return ManifestDataModule(train=man, val=man, known_tasks={"gr"}, max_batch_seconds=9.0, shuffle_buffer=6,
                                  seed=1)

    loader = dm().train_dataloader()
    epochs = [list(loader) for _ in range(2)] + [list(dm().val_dataloader()[0])]
    for batches in epochs:
        assert Counter(ids(batches)) == Counter(f"s{i}" for i in range(len(lengths)))
        assert all(padded(b) <= 9.0 + FRAME for b in batches if len(b) > 1)
        assert [len(b) for b in batches if any(s["id"] == "s30" for s in b)] == [1]
        assert any(len(b) > 2 for b in batches)  # still batches, not one clip each

    first = dm()
    it = iter(first.train_dataloader())
    before = [s["id"] for _ in range(3) for s in first.on_before_batch_transfer(next(it), 0)]
    del it
    again = dm()
    again.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert before + ids(list(again.train_dataloader())) == ids(epochs[0])
