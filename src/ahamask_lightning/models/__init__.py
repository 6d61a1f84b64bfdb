"""LALM adapters behind one small interface (``LALMAdapter``): one module per model family.

Every adapter class is importable from here. The transformers-native chat LALMs (Qwen2-Audio,
Qwen2.5-Omni thinker, Voxtral, Granite Speech, Audio Flamingo 3) share ``ChatLALMAdapter``
(``chat_collate.py``); SALMONN and the TinyLALM testbed splice audio into the prompt (``splice.py``).
Importing this package builds nothing: the families import their transformers classes when built.
"""
from .audio_flamingo3 import AudioFlamingo3Adapter
from .base import LALMAdapter
from .chat_collate import ChatLALMAdapter
from .granite_speech import GraniteSpeechAdapter
from .qwen2_5_omni import Qwen2_5OmniAdapter
from .qwen2_audio import Qwen2AudioAdapter
from .salmonn import SalmonnAdapter
from .tiny_lalm import TinyLALM
from .voxtral import VoxtralAdapter

__all__ = ["AudioFlamingo3Adapter", "ChatLALMAdapter", "GraniteSpeechAdapter", "LALMAdapter", "Qwen2AudioAdapter",
           "Qwen2_5OmniAdapter", "SalmonnAdapter", "TinyLALM", "VoxtralAdapter"]
