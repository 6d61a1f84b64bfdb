"""Metric keys: ``<stage>[_<set>]/<task>/<metric>`` made and read in one place, named by the
data module's set names and never by the folders the manifests sit in."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf

from ahamask_lightning.data import ManifestDataModule
from ahamask_lightning.evaluation import STAGES, TaskEvaluator, metric_key, parse_metric_key
from ahamask_lightning.tasks import TASKS


@pytest.mark.parametrize("eval_set", [None, "ood", "clean", "test-clean", "ood_2", "a-b_c", "0"])
def test_every_task_round_trips(eval_set):
    for stage in STAGES:
        for task in TASKS:
            for metric in ("acc", "acc_exact", "wer", "rouge_l"):
                key = metric_key(stage, task, metric, eval_set)
                assert parse_metric_key(key) == (stage, task, metric, eval_set)


def test_the_shapes():
    assert metric_key("test", "gr", "acc") == "test/gr/acc"  # unnamed: exactly <stage>/<task>/<metric>
    assert metric_key("test", "gr", "acc", "ood") == "test_ood/gr/acc"  # the set beside the stage
    assert metric_key("val", "gr_asr", "ifr", "test-clean") == "val_test-clean/gr_asr/ifr"
    # a set name holding '_' cannot be mistaken for the stage's end, nor a task for a longer one
    assert parse_metric_key("test_ood_v2/gr_asr/wer") == ("test", "gr_asr", "wer", "ood_v2")
    assert parse_metric_key("val/asr_gr/acc") == ("val", "asr_gr", "acc", None)


@pytest.mark.parametrize("args", [("test", "gr_test_ood", "acc"), ("test", "nonsense", "acc"), ("test", "", "acc"),
                                  ("test", "GR", "acc")])
def test_an_unknown_task_is_refused(args):
    with pytest.raises(ValueError) as err:
        metric_key(*args)
    message = str(err.value)
    assert "\n" not in message and "not a registered task" in message and repr(args[1]) in message


@pytest.mark.parametrize("args", [("validate", "gr", "acc", None), ("test_ood", "gr", "acc", None),
                                  ("test", "gr", "a/b", None), ("test", "gr", "", None),
                                  ("test", "gr", "acc", "OOD"), ("test", "gr", "acc", "a/b"), ("test", "gr", "acc", ""),
                                  ("test", "gr", "acc", "_ood")])
def test_parts_a_key_cannot_carry_are_refused(args):
    with pytest.raises(ValueError) as err:
        metric_key(*args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("key", [
    "test/gr_test_ood/acc",  # the older form: a directory name glued to the task
    "test/gr_asr_test-clean/wer", "test/nonsense/acc", "train/loss", "val/loss/dataloader_idx_0", "test/gr",
    "test/gr/acc/ood", "/gr/acc", "test//acc", "test/gr/", "testing/gr/acc", "Test/gr/acc", "test_OOD/gr/acc",
    "test__ood/gr/acc", "test_/gr/acc", "validate_ood/gr/acc", " test/gr/acc", "test/gr/acc ", "", "test/gr/a/b",
])
def test_malformed_keys_are_refused(key):
    with pytest.raises(ValueError) as err:
        parse_metric_key(key)
    assert "\n" not in str(err.value) and repr(key) in str(err.value)


def test_the_evaluator_keeps_sets_of_one_task_apart():
    ev = TaskEvaluator()
    batch = {"tasks": ["gr"] * 4, "texts": ["Male", "Female", "Male", "Female"], "ids": list("abcd"),
             "instructions": [None] * 4}
    ev.update(batch, ["Male", "Female", "Male", "Female"])  # unnamed: 4 of 4 right
    ev.update(batch, ["Male", "Male", "Male", "Male"], eval_set="ood")  # 2 of 4
    ev.update({**batch, "tasks": ["src"] * 4, "texts": ["slow"] * 4}, ["slow", "fast", "slow", "slow"], eval_set="ood")
    results = ev.compute("test")
    assert results["test/gr/acc"] == 100.0 and results["test_ood/gr/acc"] == 50.0
    assert results["test_ood/src/acc"] == 75.0
    assert {parse_metric_key(k)[1:] for k in results} >= {("gr", "acc", None), ("gr", "acc", "ood"),
                                                           ("src", "acc", "ood")}
    assert [p.get("set") for p in ev.predictions] == [None] * 4 + ["ood"] * 8


def _manifest(path: Path, prefix: str, n: int = 4) -> str:
    """``n`` noise clips with GR labels, in a folder whose name says nothing the keys may use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(prefix))
    lines = []
    for i in range(n):
        wav = path.parent / f"{prefix}{i}.wav"
        sf.write(wav, (0.1 * rng.standard_normal(8000 + 400 * i)).astype("float32"), 16000)
        lines.append({"id": f"{prefix}{i}", "audio": wav.name, "task": "gr", "text": ["Male", "Female"][i % 2]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def _validate(module: L.LightningModule, val, root: Path) -> tuple[dict, ManifestDataModule]:
    dm = ManifestDataModule(val=val, batch_size=4, known_tasks={"gr"}, min_seconds=0.1, collate_fn=module.collate())
    trainer = L.Trainer(default_root_dir=root, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, logger=False, limit_val_batches=1)
    trainer.validate(module, datamodule=dm)
    return dict(trainer.callback_metrics), dm


@pytest.fixture
def manifests(tmp_path) -> dict[str, str]:
    # the held-out set sits in a folder called test_ood: the old directory rule would have keyed it so
    return {"ind": _manifest(tmp_path / "data" / "test" / "gr.jsonl", "u"),
            "ood": _manifest(tmp_path / "data" / "test_ood" / "gr.jsonl", "o")}


def test_a_validation_run_on_tinylalm_keys_its_named_sets(manifests, tmp_path):
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm
    from ahamask_lightning.module import AHAMaskModule

    module = AHAMaskModule(random_tiny_lalm(["male female"], layers=2, heads=4, hidden=32), use_mask=False,
                           generation={"max_new_tokens": 2})
    logged, dm = _validate(module, {"ind": [manifests["ind"]], "ood": manifests["ood"]}, tmp_path / "named")
    assert dm.eval_sets("val") == ["ind", "ood"]
    parsed = {parse_metric_key(k) for k in logged}  # every logged key is a metric key
    metrics = set(TASKS["gr"].metric().compute())  # acc, acc_exact, answered
    assert parsed == {("val", "gr", m, s) for m in metrics for s in ("ind", "ood")}
    assert {"val_ind/gr/acc", "val_ood/gr/acc"} <= set(logged)
    for key in logged:
        assert 0.0 <= float(logged[key]) <= 100.0
    # each prediction is counted under the set its loader belongs to
    assert {p["id"][0] + ":" + p["set"] for p in module.evaluator.predictions} == {"u:ind", "o:ood"}

    # the same manifests as a plain list: one unnamed set, <stage>/<task>/<metric>, whatever the folders
    logged, dm = _validate(module, [manifests["ind"], manifests["ood"]], tmp_path / "list")
    assert dm.eval_sets("val") == [None, None]
    assert set(logged) == {metric_key("val", "gr", m) for m in metrics}
    assert not any("test" in k for k in logged)


def test_a_pretraining_validation_run_keys_its_named_sets(manifests, tmp_path):
    from ahamask_lightning.pretrain import TinyLALMPretrain

    config = {"enc_dim": 32, "enc_layers": 1, "enc_heads": 2, "llm": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "max_position_embeddings": 256}}
    module = TinyLALMPretrain([manifests["ind"]], vocab_size=120, config=config, max_new_tokens=2)
    logged, _ = _validate(module, {"ood": [manifests["ood"]]}, tmp_path / "pretrain")
    task_keys = {k for k in logged if not k.startswith("val/loss")}
    assert {parse_metric_key(k) for k in task_keys} == {("val", "gr", m, "ood") for m in TASKS["gr"].metric().compute()}
    assert "val_ood/gr/acc" in task_keys


def _batch(ids: list[str], task: str, texts: list[str]) -> dict:
    return {"ids": ids, "tasks": [task] * len(ids), "texts": texts, "instructions": [None] * len(ids)}


# rank -> the batches it evaluates: rank 1 never sees an asr sample, and its last gr sample is
# Lhotse's repeat of rank 0's ("_dup0")
RANK_BATCHES = {
    0: [(_batch(["a", "b"], "gr", ["Male", "Female"]), ["Male", "Male"]),
        (_batch(["s1"], "asr", ["the cat sat"]), ["the cat sat down"])],
    1: [(_batch(["c", "b_dup0"], "gr", ["Female", "Female"]), ["Female", "Male"])],
}


def _evaluate_on_rank(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ev = TaskEvaluator()
    for batch, preds in RANK_BATCHES[rank]:
        ev.update(batch, preds)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(ev.compute("test")))
    dist.destroy_process_group()


def test_two_ranks_compute_the_same_metrics_once_per_sample(tmp_path):
    """A task only one rank saw is still computed by both (each compute syncs across ranks: a rank
    missing one would leave the other waiting), and a padding repeat is not scored."""
    import torch.multiprocessing as mp

    context = mp.start_processes(_evaluate_on_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                                 join=False, start_method="spawn")
    try:
        for _ in range(120):
            if context.join(timeout=1):
                break
        else:
            raise AssertionError("the ranks hung in a metric's sync")
    finally:
        for process in context.processes:
            process.kill()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = TaskEvaluator()
    for batch, preds in [*RANK_BATCHES[0], (_batch(["c"], "gr", ["Female"]), ["Female"])]:
        single.update(batch, preds)
    assert ranks[0] == ranks[1] == single.compute("test")
    assert ranks[0]["test/gr/acc"] == pytest.approx(200 / 3) and "test/asr/wer" in ranks[0]
