"""Two real gloo ranks: the loader's end-of-epoch checks are decided across the ranks, and
evaluation ranks run the same number of batches when one of theirs fails to decode.

* a manifest whose only good sample went to the other rank, or was left out by ``drop_last``, is
  not "no valid samples" (it used to stop the rank that saw none of it);
* a manifest with no good sample anywhere stops every rank with the same, summed counts;
* a training epoch that plans no batch (fewer usable samples than ranks x batch_size) stops every
  rank with one line instead of running empty epochs for ever;
* an evaluation batch whose samples all failed is replaced by a padding duplicate (``_dup`` id,
  not scored), so both ranks run as many steps.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

from ahamask_lightning.data import ManifestDataModule


def _wav(path: Path, seed: int) -> str:
    # at the model's rate: nothing to resample in the forked ranks (see _ranks)
    sf.write(path, (0.1 * np.random.default_rng(seed).standard_normal(4800)).astype("float32"), 16000)
    return str(path)


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _good(root: Path, name: str, n: int) -> str:
    return _jsonl(root / f"{name}.jsonl", [{"id": f"{name}{i}", "audio": _wav(root / f"{name}{i}.wav", i), "task": "gr",
                                            "text": "Male"} for i in range(n)])


def _cuts(root: Path, name: str, n: int, missing: list[int]) -> str:
    """A Lhotse cut manifest of ``n`` cuts whose files in ``missing`` are gone since preparation
    (a cut manifest's files are only checked when decoded)."""
    cuts = []
    for i in range(n):
        rec = Recording.from_file(_wav(root / f"{name}{i}.wav", i), recording_id=f"{name}{i}")
        text = SupervisionSegment(id=f"{name}{i}", recording_id=rec.id, start=0, duration=rec.duration, text="Male")
        cuts.append(MonoCut(id=f"{name}{i}", start=0, duration=rec.duration, channel=0, recording=rec,
                            supervisions=[text], custom={"task": "gr"}))
    path = root / f"{name}.cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(path)
    for i in missing:
        (root / f"{name}{i}.wav").unlink()
    return str(path)


def _run(rank: int, stage: str, manifests: list[str], batch_size: int) -> dict:
    dm = ManifestDataModule(**{stage: manifests}, batch_size=batch_size, shuffle_buffer=1, known_tasks={"gr"},
                            min_seconds=0.1, rank=rank, world_size=2)
    loader = dm.train_dataloader() if stage == "train" else dm.test_dataloader()[0]
    try:
        return {"batches": [[s["id"] for s in batch] for batch in loader]}
    except RuntimeError as err:
        return {"error": str(err)}


def _ranks(rank: int, cases: dict, init: str, out: str) -> None:
    import torch.distributed as dist

    # a forked child must not enter the thread pool the parent (earlier tests) may have started
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        # every rank runs every case in the same order (a case that raises must not leave the
        # other rank waiting in a collective of the next one)
        got = {name: _run(rank, *case) for name, case in cases.items()}
        Path(f"{out}.{rank}").write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


def test_checks_and_eval_steps_agree_across_two_gloo_ranks(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", [{"id": "a0", "audio": _wav(tmp_path / "a0.wav", 9), "task": "gr", "text": "Male"},
                                      {"id": "a1", "audio": "gone.wav", "task": "gr", "text": "Male"}])
    cases = {
        # a0 (A's only good sample) is in the first batch, which goes to rank 0; b has 11 more: 6 batches
        "train_other_rank": ("train", [a, _good(tmp_path, "b", 11)], 2),
        # after 4 full batches of c, a0 is alone in the partial batch that drop_last leaves out
        "train_dropped": ("train", [_good(tmp_path, "c", 8), a], 2),
        "train_no_batch": ("train", [_good(tmp_path, "d", 3)], 2),  # 3 samples < 2 ranks x 2
        "test_one_missing": ("test", [_cuts(tmp_path, "e", 4, missing=[1])], 1),  # e1 is rank 1's first batch
        "test_all_missing": ("test", [_cuts(tmp_path, "f", 2, missing=[0, 1])], 1),
    }
    out = str(tmp_path / "ranks")
    context = torch.multiprocessing.start_processes(_ranks, args=(cases, f"file://{tmp_path}/pg", out), nprocs=2,
                                                    start_method="fork", join=False)
    deadline = time.monotonic() + 120  # a rank stuck in a collective must fail the test, not hang it
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError("the ranks did not finish: one waits in a collective the other never joined")
    got = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]

    trained = [g["train_other_rank"].get("batches") for g in got]
    assert all(b is not None for b in trained), got
    assert sorted(i for b in trained for batch in b for i in batch).count("a0") == 1
    assert [g["train_dropped"] for g in got] == [{"batches": [["c0", "c1"], ["c4", "c5"]]},
                                                 {"batches": [["c2", "c3"], ["c6", "c7"]]}]

    for g in got:
        assert g["train_no_batch"] == {"error": f"{tmp_path}/d.jsonl: a training epoch has no batch: 3 usable "
                                                "sample(s) for 2 rank(s) x batch_size 2 (each rank needs a full batch; "
                                                "the last, incomplete round is dropped): use more data, fewer ranks "
                                                "or a smaller batch"}
        assert g["test_all_missing"]["error"].startswith(f"{tmp_path}/f.cuts.jsonl.gz: no valid samples: 2 rejected")
    assert [g["test_one_missing"] for g in got] == [{"batches": [["e0"], ["e2"]]},
                                                    {"batches": [["e0_dup0"], ["e3"]]}]
