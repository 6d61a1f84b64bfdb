"""The AHAMask paper's published numbers, as data: what ``reproduce`` prints beside its own tables,
and which released mask belongs to which task.

A table maps a column (``analysis.report.metric_column``: ``<task>/<metric>``, a named test set in
brackets) to the paper's value under each of ``experiment.CONDITIONS`` (with instruction, no
instruction, random mask, AHAMask); None where the paper reports none.
"""
from __future__ import annotations

# Table 1 (SALMONN-13B). ASR: LibriSpeech test-clean / test-other as the sets clean / other; GR, GR|ASR,
# JSON: test-clean.
PAPER_SALMONN = {
    "asr/wer (clean)": (2.10, 12.00, 21.36, 2.10), "asr/wer (other)": (4.95, 17.23, 57.62, 5.08),
    "gr/acc": (96.79, 0.0, 0.0, 98.05), "ser/acc": (69.70, 0.0, 0.0, 70.02), "asv/acc": (93.49, 0.0, 0.18, 93.24),
    "aac/meteor": (20.60, 14.90, 14.01, 24.15), "aac/rouge_l": (40.42, 33.69, 32.19, 48.71),
    "s2tt/bleu": (34.48, 15.14, 13.64, 33.90), "osr/wer": (23.72, 30.95, 47.19, 23.89),
    "gr_asr/ifr": (98.59, None, None, 99.12), "gr_asr/acc": (68.02, None, None, 97.77),
    "gr_asr/wer": (3.52, None, None, 2.21), "json/ifr": (69.16, None, None, 98.89),
    "json/wer": (6.17, None, None, 2.40), "json/acc": (51.05, None, None, 97.30)}
# Qwen2-Audio-7B: GR with the Instruct model, ASV with the Base model.
PAPER_QWEN = {("instruct", "gr"): {"gr/acc": (91.03, None, None, 94.43)},
              ("base", "asv"): {"asv/acc": (49.24, None, None, 85.75)}}
# The released SALMONN-AHAMask mask of each task: its checkpoint is <name>.pth, the package's copy
# ``released_masks.released_mask(name)``.
RELEASED_MASKS = {"asr": "asr_librispeech", "gr": "gender_librispeech", "ser": "emotion_iemocap",
                  "asv": "asv_voxceleb1", "aac": "aac_audiocaps", "s2tt": "s2tt_covost2", "osr": "osr_libri2mix",
                  "gr_asr": "gender_asr_librispeech", "asr_gr": "asr_gender_librispeech",
                  "json": "asr_gender_json_librispeech"}
