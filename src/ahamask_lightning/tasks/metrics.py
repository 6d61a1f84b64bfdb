"""Corpus-level metrics that stay exact across batches and DDP ranks.

Counts (edits, reference words/characters, correct, total, followed) are
tensor states summed over ranks. Metrics that need the whole corpus (BLEU,
and the caption metrics in ``caption.py``) keep their texts as list states of
UTF-8 byte tensors plus a tensor of lengths, because strings cannot be
all-gathered; both lists use ``"cat"`` so, after a sync, texts and lengths
stay aligned rank by rank. Every ``compute()`` returns ``dict[str, float]`` as
percentages (x 100; error rates and CIDEr can exceed 100), and ``nan`` where a denominator is zero.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import jiwer
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .parsing import BAR, parse_label

# ----------------------------------------------------------------------------- text states


class TextStateMetric(Metric):
    """A metric with list-of-strings states (see :meth:`add_text_state`).

    torchmetrics stands in a float32 empty tensor for a list state a rank never
    filled; all-gathering that against other ranks' uint8/int64 tensors breaks
    the collective (gloo aborts on the size mismatch). So each text state always
    holds at least an empty tensor of its own dtype: one is put in when the state
    is added and again after every ``reset()``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text_states: tuple[str, ...] = ()

    def add_text_state(self, name: str) -> None:
        """Register a list-of-strings state ``name`` (two ``cat`` list states underneath)."""
        self.add_state(f"{name}_bytes", default=[], dist_reduce_fx="cat")
        self.add_state(f"{name}_lens", default=[], dist_reduce_fx="cat")
        self.text_states = (*self.text_states, name)
        self._seed_text_state(name)

    def reset(self) -> None:
        super().reset()
        for name in self.text_states:
            self._seed_text_state(name)

    def _seed_text_state(self, name: str) -> None:
        for suffix, dtype in (("_bytes", torch.uint8), ("_lens", torch.long)):
            state = getattr(self, name + suffix)
            if isinstance(state, list) and not state:
                state.append(torch.zeros(0, dtype=dtype, device=self.device))


def append_texts(metric: Metric, name: str, texts: Sequence[str]) -> None:
    """Append ``texts`` to the state ``name`` as one byte tensor and one length tensor."""
    encoded = [t.encode("utf-8") for t in texts]
    flat = b"".join(encoded)
    data = torch.frombuffer(bytearray(flat), dtype=torch.uint8) if flat else torch.zeros(0, dtype=torch.uint8)
    getattr(metric, f"{name}_bytes").append(data.to(metric.device))
    getattr(metric, f"{name}_lens").append(torch.tensor([len(e) for e in encoded], dtype=torch.long,
                                                        device=metric.device))


def _cat(state: Any) -> torch.Tensor:
    # Unsynced states are lists, synced ones tensors; integer casts guard against any
    # float stand-in for an empty state.
    if isinstance(state, list):
        if not state:
            return torch.zeros(0, dtype=torch.long)
        state = dim_zero_cat(state)
    return state.detach().cpu().long()


def read_texts(metric: Metric, name: str) -> list[str]:
    """Decode the strings held in state ``name`` (after any DDP sync, in rank order)."""
    data = bytes(_cat(getattr(metric, f"{name}_bytes")).to(torch.uint8).numpy().tobytes())
    lens = _cat(getattr(metric, f"{name}_lens")).tolist()
    if sum(lens) != len(data):
        raise RuntimeError(f"text state {name!r} is corrupt: {sum(lens)} bytes expected, {len(data)} held")
    out, pos = [], 0
    for n in lens:
        out.append(data[pos:pos + n].decode("utf-8"))
        pos += n
    return out


# ----------------------------------------------------------------------------- helpers


@lru_cache(maxsize=1)
def _english_normalizer() -> Callable[[str], str]:
    # Loading its spelling table costs a few ms; one instance serves every metric.
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize_english(text: str) -> str:
    """Whisper's English normaliser (lower case, no punctuation, spelling unified)."""
    return _english_normalizer()(text)


def _check_lengths(preds: Sequence[Any], targets: Sequence[Any]) -> None:
    if isinstance(preds, str) or isinstance(targets, str):
        raise TypeError("preds and targets must be lists of strings, not strings")
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions but {len(targets)} targets")


def word_edit_counts(preds: Sequence[str], targets: Sequence[str], normalize: bool = True) -> tuple[int, int]:
    """``(edits, reference words)`` summed over the pairs: the numerator and denominator of corpus WER."""
    _check_lengths(preds, targets)
    if normalize:
        preds = [normalize_english(p) for p in preds]
        targets = [normalize_english(t) for t in targets]
    return _edit_counts([p.split() for p in preds], [t.split() for t in targets], jiwer.process_words)


def char_edit_counts(preds: Sequence[str], targets: Sequence[str], strip_spaces: bool = True) -> tuple[int, int]:
    """``(edits, reference characters)``; spaces are dropped first by default (Chinese uses none)."""
    _check_lengths(preds, targets)
    if strip_spaces:
        preds = ["".join(p.split()) for p in preds]
        targets = ["".join(t.split()) for t in targets]
    return _edit_counts([list(p) for p in preds], [list(t) for t in targets], jiwer.process_characters)


def _edit_counts(hyp_units: list[list[str]], ref_units: list[list[str]], process: Callable) -> tuple[int, int]:
    total = sum(len(r) for r in ref_units)
    # Pairs with an empty side are pure deletions/insertions; jiwer only sees the rest.
    edits = sum(len(r) if not h else len(h) for h, r in zip(hyp_units, ref_units) if not (h and r))
    pairs = [(h, r) for h, r in zip(hyp_units, ref_units) if h and r]
    if pairs:
        sep = "" if process is jiwer.process_characters else " "
        out = process([sep.join(r) for _, r in pairs], [sep.join(h) for h, _ in pairs])
        edits += out.substitutions + out.deletions + out.insertions
    return edits, total


def _pct(num: torch.Tensor | float, den: torch.Tensor | float) -> float:
    den = float(den)
    return 100.0 * float(num) / den if den > 0 else math.nan


# ----------------------------------------------------------------------------- metrics


class WordErrorRate(Metric):
    """Corpus WER in percent: total edits / total reference words, Whisper-normalised both sides.

    ``bar_as_space`` (OSR): ``"one|two"`` is read as the concatenation ``"one two"``.
    The edits are jiwer's alignment; ``torchmetrics.text.WordErrorRate`` (1.9, checked) keeps the
    same summed states but float32 counts and its own edit distance, and the tables report jiwer's.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, bar_as_space: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bar_as_space = bar_as_space
        self.add_state("edits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("words", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: Sequence[str]) -> None:
        if self.bar_as_space:
            preds = [p.replace(BAR, " ") for p in preds]
            targets = [t.replace(BAR, " ") for t in targets]
        edits, words = word_edit_counts(preds, targets)
        self.edits += edits
        self.words += words

    def compute(self) -> dict[str, float]:
        return {"wer": _pct(self.edits, self.words)}


class LabelAccuracy(Metric):
    """Accuracy in percent; outputs go through ``parse_label`` and unparseable ones count wrong.

    ``acc`` parses leniently (the label as the first clause or the only label named); ``acc_exact``
    counts only bare-label answers (``parse_label(strict=True)``); ``answered`` is the share of
    outputs that name a label at all (leniently), right or wrong: the classification analogue of
    IFR, which separates "does the task" from "does it well" when no instruction names the task. Targets must parse to a label (``ValueError`` otherwise: that is a data bug).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, vocab: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocab = dict(vocab)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("exact", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("answered", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: Sequence[str]) -> None:
        _check_lengths(preds, targets)
        for pred, target in zip(preds, targets):
            gold = parse_label(target, self.vocab)
            if gold is None:
                raise ValueError(f"target {target!r} is not one of the labels {sorted(set(self.vocab.values()))}")
            label = parse_label(pred, self.vocab)
            self.correct += int(label == gold)
            self.answered += int(label is not None)
            self.exact += int(parse_label(pred, self.vocab, strict=True) == gold)
            self.total += 1

    def compute(self) -> dict[str, float]:
        return {"acc": _pct(self.correct, self.total), "acc_exact": _pct(self.exact, self.total),
                "answered": _pct(self.answered, self.total)}


class TranslationMetrics(TextStateMetric):
    """Corpus BLEU-4 (sacrebleu, ``tokenize`` e.g. ``"zh"``) and CER (spaces dropped), both 0-100.

    One reference per sample. ``torchmetrics.text.SacreBLEUScore`` (1.9, checked) would need no
    text states, but it offers no smoothing or add-one only, not sacrebleu's default ``exp``
    smoothing that the published BLEU figures use; so the texts are gathered and sacrebleu scores them.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, tokenize: str = "zh", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokenize = tokenize
        self.add_text_state("preds")
        self.add_text_state("targets")
        self.add_state("char_edits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("chars", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: Sequence[str]) -> None:
        _check_lengths(preds, targets)
        preds = [p.strip() for p in preds]
        targets = [t.strip() for t in targets]
        append_texts(self, "preds", preds)
        append_texts(self, "targets", targets)
        edits, chars = char_edit_counts(preds, targets)
        self.char_edits += edits
        self.chars += chars

    def compute(self) -> dict[str, float]:
        import sacrebleu

        preds, targets = read_texts(self, "preds"), read_texts(self, "targets")
        bleu = sacrebleu.corpus_bleu(preds, [targets], tokenize=self.tokenize).score if preds else math.nan
        return {"bleu": float(bleu), "cer": _pct(self.char_edits, self.chars)}


class CompositeMetrics(Metric):
    """IFR, gender accuracy and transcript WER for ``gr_asr``/``asr_gr``/``json`` (all in percent).

    ``parse`` maps a text to ``{"gender": label or None, "transcript": str}`` or ``None``.
    IFR counts outputs that follow the format over all outputs. ACC and WER are
    computed only over the outputs that followed the format (a malformed
    output adds nothing to them), as in the paper; a followed output whose
    gender part is not a label counts wrong for ACC.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, parse: Callable[[str], dict | None], keys: Sequence[str] = ("ifr", "acc", "wer"),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.parse = parse
        self.keys = tuple(keys)
        for state in ("total", "followed", "correct", "edits", "words"):
            self.add_state(state, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: Sequence[str]) -> None:
        _check_lengths(preds, targets)
        hyps, refs = [], []
        for pred, target in zip(preds, targets):
            gold = self.parse(target)
            if gold is None or gold["gender"] is None:
                raise ValueError(f"target {target!r} does not follow the task's composite format")
            self.total += 1
            out = self.parse(pred)
            if out is None:
                continue
            self.followed += 1
            self.correct += int(out["gender"] == gold["gender"])
            hyps.append(out["transcript"])
            refs.append(gold["transcript"])
        edits, words = word_edit_counts(hyps, refs)
        self.edits += edits
        self.words += words

    def compute(self) -> dict[str, float]:
        values = {"ifr": _pct(self.followed, self.total), "acc": _pct(self.correct, self.followed),
                  "wer": _pct(self.edits, self.words)}
        return {k: values[k] for k in self.keys}
