"""Turning generated text into labels and composite answers.

The paper does not publish its label strings or composite formats, so the
rules here are this project's choice, written down here:

* Classification (:func:`parse_label`): case-insensitive, punctuation and
  whitespace ignored. An output counts as label L when its first clause is
  exactly L (``" male."``, ``"Male, I think"``), or when L is the only label
  (or alias of L) mentioned anywhere (``"The speaker is female"``). An
  output that mentions several different labels outside such a first clause
  (``"yes and no"``) is ambiguous and parses to ``None``, i.e. counts wrong.
  Negations are not understood (``"not male"`` parses as ``Male``); this
  matters only for free-form answers, never for masked models that emit the
  bare label. ``strict=True`` accepts only a bare label (one word, stray
  punctuation allowed, no ``|``): ``"Male|the dog runs"`` (a GR|ASR-style
  answer) parses to ``Male`` leniently and to ``None`` strictly. Label metrics
  report both (``acc`` and ``acc_exact``), so an answer that carries the right
  label in another task's format is visible as such.
* ``|`` composites (:func:`split_bar`): exactly two non-empty parts after
  stripping whitespace, else ``None`` (the output did not follow the format).
* JSON composite (:func:`parse_json_answer`): a JSON object (surrounding
  whitespace tolerated) holding string values under both ``"ASR"`` and
  ``"GR"``, else ``None``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

# Letters/digits (any script) form words; everything else separates them.
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# The first clause ends at sentence or list punctuation, or a line break.
_CLAUSE_END = re.compile(r"[.,;:!?\n|]")

BAR = "|"
JSON_KEYS = ("ASR", "GR")


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` with punctuation removed."""
    return [w.lower() for w in _WORD.findall(text)]


def build_vocab(labels: Sequence[str], aliases: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map every accepted lower-case word to its canonical label."""
    vocab = {label.lower(): label for label in labels}
    for alias, label in (aliases or {}).items():
        if label not in labels:
            raise ValueError(f"alias {alias!r} points to {label!r}, which is not one of {tuple(labels)}")
        vocab[alias.lower()] = label
    return vocab


def parse_label(output: str, vocab: Mapping[str, str], strict: bool = False) -> str | None:
    """Canonical label for ``output`` under the rules in the module docstring, or ``None``."""
    if not isinstance(output, str):
        return None
    if strict:
        ws = words(output)
        return vocab[ws[0]] if len(ws) == 1 and ws[0] in vocab and BAR not in output else None
    first_clause = words(_CLAUSE_END.split(output.strip(), maxsplit=1)[0])
    if len(first_clause) == 1 and first_clause[0] in vocab:
        return vocab[first_clause[0]]
    mentioned = {vocab[w] for w in words(output) if w in vocab}
    if len(mentioned) == 1:
        return mentioned.pop()
    return None


def split_bar(output: str) -> tuple[str, str] | None:
    """``(left, right)`` when ``output`` is two non-empty parts joined by ``|``, else ``None``."""
    if not isinstance(output, str):
        return None
    parts = [p.strip() for p in output.strip().split(BAR)]
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def parse_json_answer(output: str) -> dict[str, str] | None:
    """``{"ASR": ..., "GR": ...}`` when ``output`` is such a JSON object, else ``None``."""
    if not isinstance(output, str):
        return None
    try:
        obj = json.loads(output.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in JSON_KEYS):
        return None
    return {k: obj[k] for k in JSON_KEYS}
