"""The task registry: instructions, label sets, target formats and metrics.

Target formats (a **choice**; the paper does not publish them):

* ``gr`` ``Male``/``Female``; ``asv`` ``Yes``/``No``; ``src`` ``slow``/``normal``/
  ``fast``; ``ser`` the IEMOCAP 4-class set ``neutral``/``happy``/``sad``/``angry``
  (IEMOCAP's ``excited`` is merged into ``happy``, as is usual for 4 classes).
* ``osr`` ``"first transcript|second transcript"``; scored as the WER of the two
  transcripts concatenated in order (the bar becomes a space on both sides).
* ``gr_asr`` ``"Male|transcript"``, ``asr_gr`` ``"transcript|Male"``,
  ``json`` ``{"ASR": "transcript", "GR": "Male"}``; build them with
  :func:`composite_target`.

Instructions are SALMONN-style (``task.instruction``); ``task.variants`` holds
rewordings for the prompt-sensitivity study (paper Figure 2) and for training
TinyLALM on many phrasings. Variants never repeat the main instruction.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .parsing import BAR, build_vocab, parse_json_answer, parse_label, split_bar

if TYPE_CHECKING:  # the metric classes import torchmetrics; keep the registry light
    from torchmetrics import Metric

KINDS = ("text", "label", "caption", "translation", "osr", "bar", "json")


@dataclass(frozen=True)
class Task:
    """One task: how to prompt it, what its targets look like, how to score it."""

    name: str
    kind: str
    instruction: str
    variants: tuple[str, ...]
    primary: str
    higher_is_better: bool
    labels: tuple[str, ...] | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)
    # For "bar" composites: which side of the bar holds the gender label.
    gender_first: bool = False
    description: str = ""
    vocab: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind {self.kind!r} not in {KINDS}")
        if self.instruction in self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"task {self.name}: variants must be distinct and differ from the instruction")
        vocab = build_vocab(self.labels, self.aliases) if self.labels else {}
        object.__setattr__(self, "vocab", MappingProxyType(vocab))
        object.__setattr__(self, "aliases", MappingProxyType(dict(self.aliases)))

    # Tasks are immutable registry singletons: copies (torchmetrics' deepcopy of a metric
    # holding ``task.parse``) and pickles (DDP spawn) resolve back to the registered object.
    def __copy__(self) -> Task:
        return self

    def __deepcopy__(self, memo: dict) -> Task:
        return self

    def __reduce__(self) -> tuple:
        return (get_task, (self.name,))

    @property
    def instructions(self) -> tuple[str, ...]:
        """The paper instruction first, then the rewordings."""
        return (self.instruction, *self.variants)

    def parse(self, output: str) -> Any:
        """Parse generated text.

        * classification: canonical label or ``None`` (see ``parsing.parse_label``);
        * ``gr_asr``/``asr_gr``/``json``: ``{"gender": label or None, "transcript": str}``,
          or ``None`` when the output does not follow the format;
        * free text (asr, aac, s2tt, osr): the stripped text.
        """
        if self.kind == "label":
            return parse_label(output, self.vocab)
        if self.kind == "bar":
            parts = split_bar(output)
            if parts is None:
                return None
            gender, transcript = parts if self.gender_first else parts[::-1]
            return {"gender": parse_label(gender, _GENDER_VOCAB), "transcript": transcript}
        if self.kind == "json":
            obj = parse_json_answer(output)
            if obj is None:
                return None
            return {"gender": parse_label(obj["GR"], _GENDER_VOCAB), "transcript": obj["ASR"]}
        return output.strip() if isinstance(output, str) else ""

    def reference_problem(self, target: str) -> str | None:
        """Why ``target`` cannot be scored as this task's reference (its metric would stop on it), or
        None: a label task's target must be one of its labels, a composite's must follow the format."""
        if self.kind == "label" and parse_label(target, self.vocab) is None:
            return f"{target!r} is not a label of task {self.name!r} (labels: {', '.join(self.labels)})"
        if self.kind in ("bar", "json"):
            parsed = self.parse(target)
            if parsed is None or parsed["gender"] is None:
                return f"{target!r} does not follow task {self.name!r}'s format with a gender label"
        return None

    def metric(self) -> Metric:
        """A new, empty metric; ``update(preds, targets)`` then ``compute() -> dict[str, float]``."""
        return _METRIC_FACTORIES[self.kind](self)


_GENDER = ("Male", "Female")
_GENDER_VOCAB = MappingProxyType(build_vocab(_GENDER))


def _variants(*texts: str) -> tuple[str, ...]:
    return tuple(texts)


def _metric_factories() -> dict[str, Callable[[Task], Metric]]:
    # Imported lazily so that prompts/data code can use the registry without torchmetrics work.
    def text(task: Task) -> Metric:
        from .metrics import WordErrorRate
        return WordErrorRate()

    def label(task: Task) -> Metric:
        from .metrics import LabelAccuracy
        return LabelAccuracy(task.vocab)

    def caption(task: Task) -> Metric:
        from .caption import CaptionMetrics
        return CaptionMetrics()

    def translation(task: Task) -> Metric:
        from .metrics import TranslationMetrics
        return TranslationMetrics(tokenize="zh")

    def osr(task: Task) -> Metric:
        from .metrics import WordErrorRate
        return WordErrorRate(bar_as_space=True)

    def composite(task: Task) -> Metric:
        from .metrics import CompositeMetrics
        keys = ("ifr", "wer", "acc") if task.kind == "json" else ("ifr", "acc", "wer")  # paper's column order
        return CompositeMetrics(task.parse, keys=keys)

    return {"text": text, "label": label, "caption": caption, "translation": translation, "osr": osr,
            "bar": composite, "json": composite}


_METRIC_FACTORIES = _metric_factories()

_GR_Q = "What is the gender of the speaker? Answer Male or Female."
_ASR_Q = "Recognize the speech and give me the transcription."

_TASK_LIST = [
    Task("asr", "text", _ASR_Q, _variants(
        "Recognize the speech and give me the transcription",
        "recognize the speech and give me the transcription.",
        "RECOGNIZE THE SPEECH AND GIVE ME THE TRANSCRIPTION.",
        "Transcribe the speech.",
        "Please write down what the speaker says.",
        "What is being said in this audio? Give me the exact words.",
        "Convert the spoken words into text.",
    ), "wer", False, description="English speech recognition (LibriSpeech), WER in percent"),
    Task("gr", "label", _GR_Q, _variants(
        "What is the gender of the speaker? Answer Male or Female",
        "what is the gender of the speaker? answer male or female.",
        "WHAT IS THE GENDER OF THE SPEAKER? ANSWER MALE OR FEMALE.",
        "Is the speaker male or female?",
        "Tell me the speaker's gender (Male/Female).",
        "Identify the gender of the person speaking. Reply with Male or Female.",
        "Is this voice a Male or a Female voice?",
    ), "acc", True, labels=_GENDER, description="speaker gender recognition, accuracy in percent"),
    Task("ser", "label", "Describe the emotion of the speaker in one word: neutral, happy, sad or angry.", _variants(
        "Describe the emotion of the speaker in one word: neutral, happy, sad or angry",
        "describe the emotion of the speaker in one word: neutral, happy, sad or angry.",
        "DESCRIBE THE EMOTION OF THE SPEAKER IN ONE WORD: NEUTRAL, HAPPY, SAD OR ANGRY.",
        "What emotion does the speaker express? Answer neutral, happy, sad or angry.",
        "How does the speaker feel? Choose one of: neutral, happy, sad, angry.",
        "Recognize the speaker's emotion (neutral, happy, sad or angry).",
    ), "acc", True, labels=("neutral", "happy", "sad", "angry"),
        aliases={"neutrality": "neutral", "happiness": "happy", "excited": "happy", "excitement": "happy",
                 "sadness": "sad", "anger": "angry",
                 # IEMOCAP's own codes, so data preparation can pass them to format_label.
                 "neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry"},
        description="IEMOCAP 4-class emotion recognition, accuracy in percent"),
    Task("src", "label", "How fast is the speaker speaking? Answer slow, normal or fast.", _variants(
        "How fast is the speaker speaking? Answer slow, normal or fast",
        "how fast is the speaker speaking? answer slow, normal or fast.",
        "HOW FAST IS THE SPEAKER SPEAKING? ANSWER SLOW, NORMAL OR FAST.",
        "Is the speaking rate slow, normal or fast?",
        "Classify the speaking rate of this utterance as slow, normal or fast.",
        "Does the speaker talk slow, at a normal pace, or fast? Answer slow, normal or fast.",
    ), "acc", True, labels=("slow", "normal", "fast"), description="speaking-rate classification, accuracy"),
    Task("asv", "label", "Are the two utterances spoken by the same speaker? Answer Yes or No.", _variants(
        "Are the two utterances spoken by the same speaker? Answer Yes or No",
        "are the two utterances spoken by the same speaker? answer yes or no.",
        "ARE THE TWO UTTERANCES SPOKEN BY THE SAME SPEAKER? ANSWER YES OR NO.",
        "Is the same person speaking in both parts of the audio? Answer Yes or No.",
        "Do these two recordings come from one speaker? Reply Yes or No.",
        "Verify whether both utterances are from the same speaker (Yes/No).",
    ), "acc", True, labels=("Yes", "No"), description="speaker verification on utterance pairs, accuracy"),
    Task("aac", "caption", "Please describe the audio.", _variants(
        "Please describe the audio",
        "please describe the audio.",
        "PLEASE DESCRIBE THE AUDIO.",
        "Describe what you hear.",
        "Write a short caption for this audio clip.",
        "What sounds can be heard in this recording?",
    ), "meteor", True, description="audio captioning (AudioCaps); METEOR, ROUGE-L, CIDEr x 100"),
    Task("s2tt", "translation", "Listen to the speech and translate it into Chinese.", _variants(
        "Listen to the speech and translate it into Chinese",
        "listen to the speech and translate it into chinese.",
        "LISTEN TO THE SPEECH AND TRANSLATE IT INTO CHINESE.",
        "Translate the English speech into Chinese.",
        "Please give me the Chinese translation of what the speaker says.",
        "What does the speaker say? Answer in Chinese.",
    ), "bleu", True, description="English-to-Chinese speech translation (CoVoST2); BLEU-4 (zh tokens), CER"),
    Task("osr", "osr", "Recognize the speech of both speakers and give me the two transcriptions separated by |.",
         _variants(
        "Recognize the speech of both speakers and give me the two transcriptions separated by |",
        "recognize the speech of both speakers and give me the two transcriptions separated by |.",
        "RECOGNIZE THE SPEECH OF BOTH SPEAKERS AND GIVE ME THE TWO TRANSCRIPTIONS SEPARATED BY |.",
        "Two people are speaking. Transcribe each of them, separated by |.",
        "Write down what both speakers say, one after the other, with | in between.",
        "Transcribe the overlapping speech of the two speakers, separated by |.",
    ), "wer", False, description="overlapped speech recognition (Libri2Mix), WER of both transcripts"),
    Task("gr_asr", "bar", f"{_GR_Q} Then recognize the speech and give me the transcription. Separate the two "
         "answers with |.", _variants(
        "First tell me the gender of the speaker (Male or Female), then the transcription, separated by |.",
        "Gender of the speaker (Male/Female), then |, then the transcription.",
        "what is the gender of the speaker? answer male or female. then recognize the speech and give me the "
        "transcription. separate the two answers with |.",
        "Answer in the form 'gender|transcription', where gender is Male or Female.",
        "Identify the speaker's gender and transcribe the speech; give the gender first and separate with |.",
    ), "ifr", True, gender_first=True, description="GR then ASR joined by '|': IFR, ACC, WER"),
    Task("asr_gr", "bar", f"{_ASR_Q} Then tell me the gender of the speaker, Male or Female. Separate the two "
         "answers with |.", _variants(
        "First give me the transcription, then the gender of the speaker (Male or Female), separated by |.",
        "Transcription, then |, then the gender of the speaker (Male/Female).",
        "recognize the speech and give me the transcription. then tell me the gender of the speaker, male or "
        "female. separate the two answers with |.",
        "Answer in the form 'transcription|gender', where gender is Male or Female.",
        "Transcribe the speech and identify the speaker's gender; give the transcription first and separate "
        "with |.",
    ), "ifr", True, gender_first=False, description="ASR then GR joined by '|': IFR, ACC, WER"),
    Task("json", "json", 'Recognize the speech and the gender of the speaker. Answer with a JSON object with the '
         'keys "ASR" (the transcription) and "GR" (Male or Female).', _variants(
        'Give me a JSON object {"ASR": transcription, "GR": Male or Female} for this audio.',
        'Output JSON with keys "ASR" and "GR": the transcription and the speaker\'s gender (Male/Female).',
        'recognize the speech and the gender of the speaker. answer with a json object with the keys "ASR" '
        '(the transcription) and "GR" (Male or Female).',
        'Transcribe the speech and identify the gender of the speaker. Reply only in JSON, using the keys '
        '"ASR" and "GR".',
        'Return {"ASR": "...", "GR": "..."} where ASR is the transcription and GR is Male or Female.',
    ), "ifr", True, description='ASR and GR as {"ASR": ..., "GR": ...}: IFR, WER, ACC'),
]

TASKS: Mapping[str, Task] = MappingProxyType({t.name: t for t in _TASK_LIST})


def get_task(name: str) -> Task:
    """The registered task called ``name``; ``ValueError`` naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def format_label(task_name: str, label: str) -> str:
    """Canonical spelling of ``label`` for a classification task (``"male"`` -> ``"Male"``).

    Aliases are accepted (``ser``: ``"exc"``/``"excited"`` -> ``"happy"``), so data
    preparation and scoring agree on one spelling. Unknown labels raise ``ValueError``.
    """
    task = get_task(task_name)
    if task.kind != "label":
        raise ValueError(f"task {task_name!r} has no label set")
    canonical = task.vocab.get(str(label).strip().lower())
    if canonical is None:
        raise ValueError(f"{label!r} is not a label of task {task_name!r}; labels: {task.labels}")
    return canonical


def composite_target(task_name: str, transcript: str, gender: str) -> str:
    """Target text for ``gr_asr`` (``"Male|text"``), ``asr_gr`` (``"text|Male"``) or ``json``."""
    task = get_task(task_name)
    gender = format_label("gr", gender)
    transcript = transcript.strip()
    if not transcript:
        raise ValueError("composite target needs a non-empty transcript")
    if task.kind == "json":
        return json.dumps({"ASR": transcript, "GR": gender}, ensure_ascii=False)
    if task.kind != "bar":
        raise ValueError(f"task {task_name!r} is not a composite task (gr_asr, asr_gr, json)")
    if BAR in transcript:
        # The bar is the field separator; a transcript holding one would not round-trip.
        raise ValueError(f"transcript must not contain {BAR!r}: {transcript!r}")
    return f"{gender}{BAR}{transcript}" if task.gender_first else f"{transcript}{BAR}{gender}"
