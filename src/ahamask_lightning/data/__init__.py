"""Data layer: JSONL or Lhotse cut manifests -> lazy CutSets -> Lhotse samplers -> resumable Lightning loaders."""
from .audio import AudioConfig, AudioError, load_audio
from .cuts import ManifestCuts, is_cut_manifest, record_to_cut
from .datamodule import ManifestDataModule
from .dataset import AudioBatches, collate_audio, identity_collate
from .loader import CutLoader, is_padding_duplicate
from .manifest import REASONS, Reject, SampleRecord, parse_line
from .rejects import read_reject_files

__all__ = [
    "REASONS", "AudioBatches", "AudioConfig", "AudioError", "CutLoader", "ManifestCuts", "ManifestDataModule",
    "Reject", "SampleRecord", "collate_audio", "identity_collate", "is_cut_manifest", "is_padding_duplicate",
    "load_audio", "parse_line",
    "read_reject_files", "record_to_cut",
]
