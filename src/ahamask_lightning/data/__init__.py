"""Streaming data layer: JSONL manifests -> resumable, DDP x worker split Lightning dataloaders."""
from .audio import AudioConfig, AudioError, load_audio
from .datamodule import ManifestDataModule
from .loader import StreamLoader
from .manifest import REASONS, Reject, SampleRecord, parse_line
from .rejects import read_reject_files
from .streaming import ManifestStream, StreamItem, collate_audio, identity_collate

__all__ = [
    "REASONS", "AudioConfig", "AudioError", "ManifestDataModule", "ManifestStream", "Reject", "SampleRecord",
    "StreamItem", "StreamLoader", "collate_audio", "identity_collate", "load_audio", "parse_line",
    "read_reject_files",
]
