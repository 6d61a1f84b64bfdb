"""Task registry: names, instructions, label parsing, composite formats."""
from __future__ import annotations

import copy
import json
import pickle

import pytest
from torchmetrics import Metric

from ahamask_lightning.tasks import TASKS, Task, composite_target, format_label, get_task

NAMES = ("asr", "gr", "ser", "src", "asv", "aac", "s2tt", "osr", "gr_asr", "asr_gr", "json")


def test_registry_holds_exactly_the_paper_tasks() -> None:
    assert tuple(TASKS) == NAMES
    for name in NAMES:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name


def test_unknown_task_error_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*asr, gr, ser"):
        get_task("nope")


@pytest.mark.parametrize("name", NAMES)
def test_instruction_variants_are_distinct_rewordings(name: str) -> None:
    task = get_task(name)
    assert task.instruction.strip()
    assert len(task.variants) >= 5
    assert len(set(task.variants)) == len(task.variants)
    assert task.instruction not in task.variants
    assert task.instructions == (task.instruction, *task.variants)
    assert all(v.strip() for v in task.variants)


def test_paper_instructions() -> None:
    assert get_task("asr").instruction == "Recognize the speech and give me the transcription."
    assert get_task("gr").instruction == "What is the gender of the speaker? Answer Male or Female."


@pytest.mark.parametrize("name,labels", [
    ("gr", ("Male", "Female")), ("src", ("slow", "normal", "fast")), ("asv", ("Yes", "No")),
    ("ser", ("neutral", "happy", "sad", "angry")),
])
def test_label_sets(name: str, labels: tuple[str, ...]) -> None:
    assert get_task(name).labels == labels


@pytest.mark.parametrize("name,primary,higher", [
    ("asr", "wer", False), ("osr", "wer", False), ("gr", "acc", True), ("aac", "meteor", True),
    ("s2tt", "bleu", True), ("json", "ifr", True), ("gr_asr", "ifr", True),
])
def test_primary_metric(name: str, primary: str, higher: bool) -> None:
    task = get_task(name)
    assert (task.primary, task.higher_is_better) == (primary, higher)


@pytest.mark.parametrize("text,expected", [
    ("Male", "Male"), (" male.", "Male"), ("FEMALE!", "Female"), ("The speaker is female", "Female"),
    ("Male. Definitely not female.", "Male"),  # first clause decides
    ("Female Male", None), ("male or female", None), ("I don't know", None), ("", None),
    ("Malefactor", None), ("females", None),  # whole words only
    ("Male|the dog runs", "Male"),  # a GR|ASR-style answer: lenient parsing reads its first clause
])
def test_gr_parse(text: str, expected: str | None) -> None:
    assert get_task("gr").parse(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Male", "Male"), (" female. ", "Female"), ("Male|the dog runs", None), ("The speaker is female", None),
    ("Male Female", None), ('{"ASR": "a dog", "GR": "Male"}', None),
])
def test_gr_parse_strict(text: str, expected: str | None) -> None:
    from ahamask_lightning.tasks.parsing import parse_label

    assert parse_label(text, get_task("gr").vocab, strict=True) == expected


def test_label_metric_reports_lenient_and_exact() -> None:
    metric = get_task("gr").metric()
    metric.update(["Male", "Female|a dog runs", "The speaker is male", "Male", "a dog runs"],
                  ["Male", "Female", "Male", "Female", "Male"])
    assert metric.compute() == {"acc": 60.0, "acc_exact": 20.0, "answered": 80.0}


def test_other_label_parses() -> None:
    assert get_task("asv").parse("yes and no") is None
    assert get_task("asv").parse("No, they differ.") == "No"
    assert get_task("ser").parse("The speaker sounds angry.") == "angry"
    assert get_task("ser").parse("Excited") == "happy"  # IEMOCAP 4-class merge
    assert get_task("src").parse("FAST") == "fast"
    assert get_task("src").parse("slow, not fast") == "slow"


def test_composite_parses() -> None:
    assert get_task("gr_asr").parse(" Male | hello world ") == {"gender": "Male", "transcript": "hello world"}
    assert get_task("asr_gr").parse("hello world|female") == {"gender": "Female", "transcript": "hello world"}
    assert get_task("gr_asr").parse("Robot|hello") == {"gender": None, "transcript": "hello"}
    for bad in ("Male hello world", "Male|", "|hello", "a|b|c", ""):
        assert get_task("gr_asr").parse(bad) is None, bad
    js = get_task("json")
    assert js.parse('\n {"ASR": "hi", "GR": "Male"} ') == {"gender": "Male", "transcript": "hi"}
    for bad in ('{"ASR": "hi", "GR": "Male"', '{"ASR": "hi"}', '["hi", "Male"]', '{"ASR": 3, "GR": "Male"}'):
        assert js.parse(bad) is None, bad


def test_free_text_parse_strips() -> None:
    assert get_task("asr").parse("  hello world \n") == "hello world"


def test_composite_target_round_trips() -> None:
    assert composite_target("gr_asr", "hello world", "male") == "Male|hello world"
    assert composite_target("asr_gr", " hello world ", "Female") == "hello world|Female"
    target = composite_target("json", "it's fine", "male")
    assert json.loads(target) == {"ASR": "it's fine", "GR": "Male"}
    for name in ("gr_asr", "asr_gr", "json"):
        parsed = get_task(name).parse(composite_target(name, "good morning", "female"))
        assert parsed == {"gender": "Female", "transcript": "good morning"}
    with pytest.raises(ValueError):
        composite_target("gr_asr", "a|b", "Male")
    with pytest.raises(ValueError):
        composite_target("gr_asr", "hello", "robot")
    with pytest.raises(ValueError):
        composite_target("asr", "hello", "Male")


def test_format_label() -> None:
    assert format_label("gr", " male ") == "Male"
    assert format_label("asv", "YES") == "Yes"
    assert format_label("ser", "exc") == "happy"
    assert format_label("ser", "Ang") == "angry"
    with pytest.raises(ValueError):
        format_label("gr", "robot")
    with pytest.raises(ValueError):
        format_label("asr", "Male")


def test_metric_is_new_each_time_and_tasks_copy_to_themselves() -> None:
    task = get_task("gr_asr")
    m1, m2 = task.metric(), task.metric()
    assert isinstance(m1, Metric) and m1 is not m2
    assert copy.deepcopy(task) is task and pickle.loads(pickle.dumps(task)) is task
    clone = m1.clone()  # deepcopy: must not fail on the task's read-only mappings
    clone.update(["Male|hi"], ["Male|hi"])
    assert clone.compute()["ifr"] == 100.0
