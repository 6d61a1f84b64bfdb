"""LALM adapters behind one small interface (``LALMAdapter``): one module per model family."""
from .base import LALMAdapter
from .qwen2_audio import Qwen2AudioAdapter
from .tiny_lalm import TinyLALM

__all__ = ["LALMAdapter", "Qwen2AudioAdapter", "TinyLALM"]

# LALMs native in transformers 5 (the thinker of Qwen2.5-Omni, Voxtral, Granite Speech, Audio Flamingo 3)
from .audio_flamingo3 import AudioFlamingo3Adapter
from .granite_speech import GraniteSpeechAdapter
from .qwen2_5_omni import Qwen2_5OmniAdapter
from .voxtral import VoxtralAdapter

__all__ += ["AudioFlamingo3Adapter", "GraniteSpeechAdapter", "Qwen2_5OmniAdapter", "VoxtralAdapter"]
