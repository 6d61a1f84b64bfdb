"""Audio-captioning metrics with the COCO caption toolkit (pycocoevalcap).

METEOR (the bundled meteor-1.5 jar), ROUGE-L and CIDEr-D (the toolkit's ``Cider``:
clipped n-gram counts, a length penalty, x 10), after the toolkit's PTB tokenizer (CoreNLP 3.4.1 jar). Both jars
need Java on the PATH and no network. SPICE downloads CoreNLP models at first
use, so it runs only when asked for (``spice=True``). All scores are the
toolkit's corpus scores x 100 (CIDEr's raw scale is 0-10, so its x 100 value
can exceed 100, as in the usual "CIDEr 75.0" reporting). CIDEr's IDF comes from the evaluated
references, so it is only meaningful on a corpus, not on one or two clips.

Targets may carry several references: a sequence of strings, or one string
with one reference per line.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .metrics import TextStateMetric, append_texts, read_texts

# Inside the text state, the references of one clip are joined with this.
_REF_SEP = "\n"


def split_references(target: str | Sequence[str]) -> list[str]:
    """The non-empty references in ``target`` (a string, one per line, or a sequence)."""
    refs = target.split(_REF_SEP) if isinstance(target, str) else [str(t) for t in target]
    refs = [" ".join(r.split()) for r in refs]
    refs = [r for r in refs if r]
    if not refs:
        raise ValueError(f"caption target {target!r} holds no reference")
    return refs


def coco_caption_scores(preds: Sequence[str], references: Sequence[Sequence[str]],
                        spice: bool = False) -> dict[str, float]:
    """``{"meteor", "rouge_l", "cider"[, "spice"]}`` x 100 for one corpus (one prediction per clip)."""
    return {k: corpus for k, (corpus, _) in coco_caption_item_scores(preds, references, spice).items()}


def coco_caption_item_scores(preds: Sequence[str], references: Sequence[Sequence[str]],
                             spice: bool = False) -> dict[str, tuple[float, list[float]]]:
    """Per metric: ``(corpus score, per-clip scores)``, all x 100.

    METEOR's corpus score pools the clips' statistics, so it is not the mean of
    the per-clip scores; ROUGE-L's and CIDEr's are.
    """
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if len(preds) != len(references):
        raise ValueError(f"{len(preds)} predictions but {len(references)} reference lists")
    keys = ("meteor", "rouge_l", "cider") + (("spice",) if spice else ())
    if not preds:
        return {k: (math.nan, []) for k in keys}
    # One tokenizer run (one JVM start) for references and predictions together. The tokenizer
    # keeps one output line per input line and ends a line at \r, \v, \f and U+2028 as well as
    # \n: one such character in a text would pair every later caption with the wrong clip, so
    # every whitespace run becomes one space (str.split's whitespace covers them all).
    captions = {("ref", i): [{"caption": " ".join(r.split())} for r in refs] for i, refs in enumerate(references)}
    captions.update({("hyp", i): [{"caption": " ".join(p.split())}] for i, p in enumerate(preds)})
    tokens = PTBTokenizer().tokenize(captions)
    gts = {i: tokens[("ref", i)] for i in range(len(preds))}
    res = {i: tokens[("hyp", i)] for i in range(len(preds))}
    scorers: list[tuple[str, Any]] = [("meteor", Meteor()), ("rouge_l", Rouge()), ("cider", Cider())]
    if spice:
        from pycocoevalcap.spice.spice import Spice

        scorers.append(("spice", Spice()))
    out = {}
    for key, scorer in scorers:
        score, items = scorer.compute_score(gts, res)
        # SPICE returns per-clip dicts; its corpus score is what matters there.
        item_values = [100.0 * float(v["All"]["f"] if isinstance(v, dict) else v) for v in items]
        out[key] = (100.0 * float(score), item_values)
    return out


class CaptionMetrics(TextStateMetric):
    """METEOR, ROUGE-L, CIDEr (optionally SPICE) x 100 over the whole gathered corpus."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, spice: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spice = spice
        self.add_text_state("preds")
        self.add_text_state("refs")

    def update(self, preds: Sequence[str], targets: Sequence[str | Sequence[str]]) -> None:
        if isinstance(preds, str) or len(preds) != len(targets):
            raise ValueError("preds and targets must be equally long lists")
        append_texts(self, "preds", [p.strip() for p in preds])
        append_texts(self, "refs", [_REF_SEP.join(split_references(t)) for t in targets])

    def compute(self) -> dict[str, float]:
        preds = read_texts(self, "preds")
        refs = [r.split(_REF_SEP) for r in read_texts(self, "refs")]
        return coco_caption_scores(preds, refs, spice=self.spice)

