"""Metrics against hand-computed values, across batches and (simulated) DDP ranks."""
from __future__ import annotations

import math
import shutil

import jiwer
import pytest
import sacrebleu
from torchmetrics import Metric

from ahamask_lightning.tasks import caption as caption_mod
from ahamask_lightning.tasks import composite_target, get_task
from ahamask_lightning.tasks.metrics import read_texts


def sync_as_ranks(metrics: list[Metric]) -> Metric:
    """Make ``metrics[0]`` reduce its states with the others' as if each metric were one DDP rank.

    Only torchmetrics' public sync path runs: each other "rank" syncs once through a recording
    ``dist_sync_fn`` (keeping the tensors it would send, in call order) and unsyncs; ``metrics[0]``
    then gets a ``dist_sync_fn`` that returns, per call, its own tensor and those recorded, and is
    told it is distributed -- so its ``compute()`` (or ``sync_context()``) does the real reduction.
    """
    recorded: list[list] = []
    for other in metrics[1:]:
        calls: list = []
        other.sync(dist_sync_fn=lambda t, group=None, calls=calls: calls.append(t) or [t],
                   distributed_available=lambda: True)
        other.unsync()
        recorded.append(calls)
    position = iter(range(1_000_000))

    def gather(tensor, group=None):
        i = next(position) % len(recorded[0])  # every sync makes the same calls in the same order
        assert all(calls[i].dtype == tensor.dtype for calls in recorded), "ranks disagree on a state's dtype"
        return [tensor] + [calls[i] for calls in recorded]

    metrics[0].dist_sync_fn = gather
    metrics[0].distributed_available_fn = lambda: True
    return metrics[0]


# ----------------------------------------------------------------------------- WER


def test_wer_normalises_both_sides() -> None:
    m = get_task("asr").metric()
    m.update(["Hello, World!", "It costs twenty-five dollars."], ["hello world", "it costs $25"])
    assert m.compute() == {"wer": 0.0}


def test_wer_is_corpus_level_across_batches() -> None:
    m = get_task("asr").metric()
    # 1 deletion over 6 reference words
    m.update(["the cat sat on mat"], ["the cat sat on the mat"])
    # a [big] dog barked->barks [loudly]: 1 substitution + 2 insertions over 3 words
    m.update(["a big dog barked loudly"], ["a dog barks"])
    assert m.compute()["wer"] == pytest.approx(100 * 4 / 9)  # not the batch mean (58.3)
    m.update([""], ["two words"])  # empty output: 2 deletions
    assert m.compute()["wer"] == pytest.approx(100 * 6 / 11)
    m.reset()
    assert math.isnan(m.compute()["wer"])


def test_osr_wer_reads_both_transcripts_in_order() -> None:
    m = get_task("osr").metric()
    m.update(["hello world|good morning"], ["hello world|good evening"])
    assert m.compute()["wer"] == pytest.approx(25.0)
    m.update(["hello world good evening"], ["hello world|good evening"])  # no bar: still scored
    assert m.compute()["wer"] == pytest.approx(100 * 1 / 8)


# ----------------------------------------------------------------------------- accuracy


def test_gender_accuracy_with_messy_outputs() -> None:
    m = get_task("gr").metric()
    m.update([" male.", "The speaker is female", "Female Male"], ["Male", "Female", "Male"])
    m.update(["MALE!!", "unknown", ""], ["Female", "Male", "Female"])
    # answered: " male.", "...female" and "MALE!!" name one label; "Female Male" names two, the rest none
    assert m.compute() == {
        "acc": pytest.approx(100 * 2 / 6),
        "acc_exact": pytest.approx(100 * 1 / 6),
        "answered": pytest.approx(100 * 3 / 6),
    }


def test_asv_ambiguous_answer_is_wrong() -> None:
    m = get_task("asv").metric()
    m.update(["yes and no", "No.", "Yes, they are the same speaker."], ["Yes", "No", "Yes"])
    assert m.compute()["acc"] == pytest.approx(100 * 2 / 3)


def test_accuracy_rejects_unknown_target() -> None:
    with pytest.raises(ValueError, match="not one of the labels"):
        get_task("ser").metric().update(["happy"], ["bored"])


# ----------------------------------------------------------------------------- composites


def test_gr_asr_ifr_and_submetrics_over_followed_outputs() -> None:
    m = get_task("gr_asr").metric()
    gold = composite_target("gr_asr", "hello world", "Male")
    m.update(["Male|hello world", "Male hello world", "Male|"],
             [gold, gold, gold])
    m.update(["a|b|c", "Female|hello word", "  female | Good morning.  "],
             [gold, gold, composite_target("gr_asr", "good morning", "Female")])
    out = m.compute()
    assert list(out) == ["ifr", "acc", "wer"]
    assert out["ifr"] == pytest.approx(50.0)  # 3 of 6 followed
    assert out["acc"] == pytest.approx(100 * 2 / 3)  # among the 3 followed
    assert out["wer"] == pytest.approx(100 * 1 / 6)  # word->world over 2+2+2 words


def test_asr_gr_reads_the_gender_on_the_right() -> None:
    m = get_task("asr_gr").metric()
    m.update(["hello world|Female", "Male|hello world"], ["hello world|Female", "hello world|Female"])
    out = m.compute()
    # the second output follows the bar format, but its right side is no gender label
    assert out == {"ifr": 100.0, "acc": 50.0, "wer": pytest.approx(100 * 2 / 4)}


def test_json_ifr_and_submetrics() -> None:
    m = get_task("json").metric()
    gold = composite_target("json", "hello world", "Male")
    preds = [' {"ASR": "hello world", "GR": "Male"}\n', '{"ASR": "hello world"', '{"ASR": "hello world"}',
             '["hello world", "Male"]', '{"ASR": "hello there world", "GR": "female"}']
    m.update(preds, [gold] * 5)
    out = m.compute()
    assert list(out) == ["ifr", "wer", "acc"]
    assert out == {"ifr": pytest.approx(40.0), "wer": pytest.approx(25.0), "acc": pytest.approx(50.0)}


def test_composite_with_nothing_followed_gives_nan_submetrics() -> None:
    m = get_task("json").metric()
    m.update(["Male hello"], [composite_target("json", "hello", "Male")])
    out = m.compute()
    assert out["ifr"] == 0.0 and math.isnan(out["acc"]) and math.isnan(out["wer"])


# ----------------------------------------------------------------------------- S2TT


ZH_PREDS = ["今天天气很好。", "我 喜欢 猫", "他明天去北京开会"]
ZH_REFS = ["今天天气很好。", "我喜欢狗", "他明天要去北京开会"]


def test_bleu_and_cer_match_direct_computation() -> None:
    m = get_task("s2tt").metric()
    m.update(ZH_PREDS[:2], ZH_REFS[:2])
    m.update(ZH_PREDS[2:], ZH_REFS[2:])
    out = m.compute()
    direct = sacrebleu.corpus_bleu(ZH_PREDS, [ZH_REFS], tokenize="zh").score
    assert out["bleu"] == pytest.approx(direct)
    assert 0 < out["bleu"] < 100
    # CER by hand: 0/7 + 1 substitution/4 + 1 deletion/9, spaces ignored
    assert out["cer"] == pytest.approx(100 * 2 / 20)
    assert out["cer"] == pytest.approx(100 * jiwer.cer(ZH_REFS, [p.replace(" ", "") for p in ZH_PREDS]))


# ----------------------------------------------------------------------------- DDP


def test_counts_and_texts_reduce_across_ranks() -> None:
    asr = [get_task("asr").metric() for _ in range(2)]
    asr[0].update(["the cat sat on mat"], ["the cat sat on the mat"])
    asr[1].update(["a big dog barked loudly"], ["a dog barks"])
    assert sync_as_ranks(asr).compute()["wer"] == pytest.approx(100 * 4 / 9)

    st = [get_task("s2tt").metric() for _ in range(3)]
    st[0].update(ZH_PREDS[:1], ZH_REFS[:1])
    st[2].update(ZH_PREDS[1:], ZH_REFS[1:])  # rank 1 saw no data at all
    synced = sync_as_ranks(st)
    with synced.sync_context(dist_sync_fn=synced.dist_sync_fn, distributed_available=lambda: True):
        assert read_texts(synced, "preds") == [p.strip() for p in ZH_PREDS]
        assert read_texts(synced, "targets") == ZH_REFS
    assert read_texts(synced, "preds") == [ZH_PREDS[0].strip()]  # unsynced again: rank 0's own
    out = synced.compute()
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(ZH_PREDS, [ZH_REFS], tokenize="zh").score)
    assert out["cer"] == pytest.approx(10.0)

    comp = [get_task("gr_asr").metric() for _ in range(2)]
    comp[0].update(["Male|hello world", "oops"], ["Male|hello world"] * 2)
    comp[1].update(["Female|hello word"], ["Male|hello world"])
    assert sync_as_ranks(comp).compute() == {"ifr": pytest.approx(200 / 3), "acc": 50.0, "wer": 25.0}


# ----------------------------------------------------------------------------- AAC


def test_caption_metric_plumbing(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_scores(preds, refs, spice=False):
        seen.update(preds=preds, refs=refs, spice=spice)
        return {"meteor": 1.0, "rouge_l": 2.0, "cider": 3.0}

    monkeypatch.setattr(caption_mod, "coco_caption_scores", fake_scores)
    ranks = [get_task("aac").metric() for _ in range(2)]
    ranks[0].update([" A dog barks. "], [["A dog is barking.", "Dog  barking"]])
    ranks[1].update(["Rain falls"], ["Rain is falling\nHeavy rain\n"])
    assert sync_as_ranks(ranks).compute() == {"meteor": 1.0, "rouge_l": 2.0, "cider": 3.0}
    assert seen == {"preds": ["A dog barks.", "Rain falls"],
                    "refs": [["A dog is barking.", "Dog barking"], ["Rain is falling", "Heavy rain"]],
                    "spice": False}


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's jars need Java")
def test_coco_caption_scores_on_a_tiny_corpus() -> None:
    from pycocoevalcap.cider.cider import Cider

    preds = ["A dog barks loudly.", "Rain is falling on a roof"]
    refs = [["a dog is barking loudly"], ["Rain is falling on a roof."]]
    scores = caption_mod.coco_caption_item_scores(preds, refs)  # one tokenizer + one METEOR JVM
    # ROUGE-L by hand: LCS("a dog barks loudly", "a dog is barking loudly") = 3, P = 3/4, R = 3/5,
    # F = (1 + 1.2^2) P R / (R + 1.2^2 P); the identical pair scores 1.
    p, r, b2 = 3 / 4, 3 / 5, 1.2 ** 2
    rouge_1 = 100 * (1 + b2) * p * r / (r + b2 * p)
    corpus, items = scores["rouge_l"]
    assert items == pytest.approx([rouge_1, 100.0])
    assert corpus == pytest.approx((rouge_1 + 100) / 2)
    corpus, items = scores["meteor"]
    assert items[1] > 90 and 20 < items[0] < 90 and items[0] < items[1]
    assert items[0] < corpus < items[1]
    tokenized_refs = {0: ["a dog is barking loudly"], 1: ["rain is falling on a roof"]}
    direct = Cider().compute_score(tokenized_refs, {0: ["a dog barks loudly"], 1: ["rain is falling on a roof"]})
    assert scores["cider"][0] == pytest.approx(100 * direct[0])
    assert "spice" not in scores


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's jars need Java")
def test_a_line_break_inside_a_caption_leaves_every_clip_paired_with_its_own_references() -> None:
    """The PTB tokenizer ends a line at \\r, \\v, \\f and U+2028 too: such a character in a model's
    output must not shift the later clips onto other clips' references."""
    refs = [["A dog is barking."], ["Rain falls on a roof."], ["People are talking"], ["A bell rings"]]
    preds = ["a dog is barking", "rain falls on a roof", "people are talking", "a bell rings"]
    clean = caption_mod.coco_caption_item_scores(preds, refs)
    broken = ["a dog is\rbarking", "rain falls\u2028on a roof", "people\x0bare\x0ctalking", "a bell\r\nrings"]
    scores = caption_mod.coco_caption_item_scores(broken, refs)
    for key in ("meteor", "rouge_l", "cider"):
        assert scores[key][1] == pytest.approx(clean[key][1]) and scores[key][0] == pytest.approx(clean[key][0])
    assert scores["rouge_l"][1] == pytest.approx([100.0] * 4)


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's jars need Java")
def test_a_prepared_caption_test_set_is_scored_against_every_reference(tmp_path) -> None:
    """AudioCaps as ``ahamask data prepare`` writes it (a test clip: its first caption as the target,
    all its captions in ``meta.references``), through the data module and the model's collate, into
    the evaluator: METEOR counts a prediction that matches any caption of its clip."""
    from corpus_helpers import write_audio, write_text

    from ahamask_lightning.data import ManifestDataModule
    from ahamask_lightning.data.collate import SampleCollate
    from ahamask_lightning.evaluation import TaskEvaluator
    from ahamask_lightning.models.tiny_lalm import random_tiny_lalm
    from data_modules.prepare import prepare

    root = tmp_path / "audiocaps"
    write_text(root / "test.csv", "audiocap_id,youtube_id,start_time,caption\n"
               "1,7fmOlUlwoNg,20,Rain falls on a roof\n2,7fmOlUlwoNg,20,Heavy rain pours down on the street\n"
               "3,r1nicOVtvkQ,0,A dog barks at a passing car\n4,r1nicOVtvkQ,0,Birds sing in the morning\n")
    write_audio(root / "test" / "7fmOlUlwoNg.wav", 0.3)
    write_audio(root / "test" / "r1nicOVtvkQ.wav", 0.3)
    prepare("audiocaps", root, tmp_path / "out")
    dm = ManifestDataModule(test=str(tmp_path / "out" / "manifests" / "test" / "aac.cuts.jsonl.gz"), batch_size=2,
                            min_seconds=0.1, collate_fn=SampleCollate(random_tiny_lalm(), "none"))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    order = sorted(range(2), key=lambda i: batch["ids"][i])
    assert [batch["references"][i] for i in order] == [
        ["Rain falls on a roof", "Heavy rain pours down on the street"],
        ["A dog barks at a passing car", "Birds sing in the morning"]]
    # each prediction is the second caption of its clip, never the target (the first)
    preds = [batch["references"][i][1] for i in range(2)]
    every, first_only = TaskEvaluator(), TaskEvaluator()
    every.update(batch, preds)
    first_only.update({k: v for k, v in batch.items() if k != "references"}, preds)
    assert every.compute("test")["test/aac/meteor"] > 90 > first_only.compute("test")["test/aac/meteor"]
    assert every.predictions[0]["references"] == batch["references"][0]


def test_only_caption_tasks_take_several_references() -> None:
    from ahamask_lightning.evaluation import TaskEvaluator

    evaluator = TaskEvaluator()
    batch = {"tasks": ["asr"], "ids": ["u0"], "instructions": [None], "texts": ["hello world"],
             "references": [["hello there world"]]}
    evaluator.update(batch, ["hello world"])
    assert evaluator.compute("test") == {"test/asr/wer": 0.0}  # scored against its target text
    assert "references" not in evaluator.predictions[0]


# ----------------------------------------------------------------------------- real DDP (gloo)


def _gloo_worker(rank: int, init_file: str, out_dir: str) -> None:
    import json as json_mod

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        asr, s2tt, comp = (get_task(n).metric() for n in ("asr", "s2tt", "gr_asr"))
        if rank == 0:
            asr.update(["the cat sat on mat"], ["the cat sat on the mat"])
            s2tt.update(ZH_PREDS, ZH_REFS)  # rank 1 has no S2TT data: empty list states
            comp.update(["Male|hello world", "oops"], ["Male|hello world"] * 2)
        else:
            asr.update(["a big dog barked loudly", ""], ["a dog barks", "two words"])
            comp.update(["Female|hello word"], ["Male|hello world"])
        result = {"asr": asr.compute(), "s2tt": s2tt.compute(), "gr_asr": comp.compute()}
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json_mod.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_real_two_process_gloo_sync(tmp_path) -> None:
    import json as json_mod

    import torch.multiprocessing as mp

    # fork keeps this cheap: the children reuse the already-imported torch
    mp.start_processes(_gloo_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    bleu = sacrebleu.corpus_bleu(ZH_PREDS, [ZH_REFS], tokenize="zh").score
    for rank in range(2):
        result = json_mod.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["asr"]["wer"] == pytest.approx(100 * 6 / 11)
        assert result["s2tt"]["bleu"] == pytest.approx(bleu)
        assert result["s2tt"]["cer"] == pytest.approx(10.0)
        assert result["gr_asr"] == {"ifr": pytest.approx(200 / 3), "acc": 50.0, "wer": 25.0}
