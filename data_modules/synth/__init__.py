"""SynthSpeech: a deterministic synthetic speech + sound-scene corpus (espeak-ng, sox).

Data for the TinyLALM testbed: ASR, gender, speaking rate, speaker verification, audio
captioning and composite (gr_asr, json) tasks, with an out-of-domain voice split.
"""

from .corpus import SPLITS, TASKS, add_arguments, run, synthesize

__all__ = ["SPLITS", "TASKS", "add_arguments", "run", "synthesize"]
