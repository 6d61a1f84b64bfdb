"""SALMONN v1 (Whisper + BEATs + window-level Q-Former + Vicuna with LoRA) for AHAMask."""
from .beats import BEATs, BEATsConfig, beats_fbank, load_beats, num_beats_tokens
from .checkpoint import check_checkpoint, load_salmonn_state, read_checkpoint
from .generation import official_beam_search
from .model import SalmonnAdapter, missing_paths, resolve_paths
from .qformer import SalmonnConnector, num_windows, split_windows
from .tokenizer import SalmonnLlamaTokenizer, load_salmonn_tokenizer

__all__ = [
    "BEATs", "BEATsConfig", "SalmonnAdapter", "SalmonnConnector", "SalmonnLlamaTokenizer", "beats_fbank",
    "check_checkpoint", "load_beats", "load_salmonn_state", "load_salmonn_tokenizer", "missing_paths",
    "num_beats_tokens", "num_windows", "official_beam_search", "read_checkpoint", "resolve_paths", "split_windows",
]
