"""LALM adapters behind one small interface (``LALMAdapter``): one module per model family."""
from .base import LALMAdapter
from .qwen2_audio import Qwen2AudioAdapter
from .tiny_lalm import TinyLALM

__all__ = ["LALMAdapter", "Qwen2AudioAdapter", "TinyLALM"]
