"""Lhotse Shar: a corpus's cuts packed with their audio into tar shards.

Many small audio files are slow to open on network file systems and object stores; Lhotse's Shar
format keeps the cuts (``cuts.NNNNNN.jsonl.gz``) beside tar shards of their audio
(``recording.NNNNNN.tar``, and ``audio_b.NNNNNN.tar`` for the second clip of a speaker-verification
pair), read sequentially.

* ``ahamask data shar MANIFEST... --out DIR`` (:func:`export_shar`) reads the manifests through the
  data layer (:class:`~.cuts.ManifestCuts`: every check of a training run; a bad line is skipped,
  counted and named) and writes the good cuts with Lhotse's ``CutSet.to_shar``: only each cut's
  own segment of audio, FLAC by default (lossless at 16 bits).
* A directory in that layout is a manifest like any other (``data.init_args.train: [DIR]``):
  :class:`~.cuts.ManifestCuts` reads it with ``CutSet.from_shar`` (:func:`iter_shar`) and applies
  the same text, task and length checks; the audio travels in memory with its cut and is decoded in
  the loader workers (``dataset.cut_audio``).

Clip B of a pair. Lhotse's Shar writer declares a custom recording as long as its cut (it assumes
custom audio aligned with the cut) while writing the whole clip for an unaligned one, which a pair's
clip B is (``audio_b_unaligned``). The export therefore records B's length in the cut
(``audio_b_samples``) and :func:`iter_shar` gives the recording that length back.

Libraries checked: Lhotse writes and reads the format; this module adds the checks, the length of
clip B, and the CLI.
"""
from __future__ import annotations

import argparse
import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from lhotse import CutSet, MonoCut, Recording, fastcopy

CUT_SHARDS = "cuts.*.jsonl*"
SHAR_LAYOUT = "a Lhotse Shar directory (cuts.000000.jsonl.gz beside recording.000000.tar, ...)"


def is_shar_dir(path: str) -> bool:
    """Whether ``path`` is a directory holding Shar cut shards."""
    return os.path.isdir(path) and bool(glob.glob(os.path.join(path, CUT_SHARDS)))


def iter_shar(path: str, limit: int | None = None) -> Iterator[tuple[int, MonoCut]]:
    """(1-based position, cut) for the cuts of a Shar directory, in shard order, at most ``limit``.
    A shard Lhotse cannot read stops the iteration with one line naming the directory."""
    position = 0
    cuts = iter(CutSet.from_shar(in_dir=path))
    while limit is None or position < limit:
        try:
            cut = next(cuts)
        except StopIteration:
            return
        except Exception as err:  # noqa: BLE001 - tarfile, gzip and JSON errors of a damaged shard
            raise ValueError(f"{path}: Shar shards unreadable after cut {position}: {type(err).__name__}: {err}") \
                from None
        position += 1
        yield position, _with_clip_b_length(cut)


def _with_clip_b_length(cut: MonoCut) -> MonoCut:
    """The cut with its clip B declared at the length the export recorded (see the module docstring)."""
    custom = cut.custom or {}
    other, samples = custom.get("audio_b"), custom.get("audio_b_samples")
    if not isinstance(other, Recording) or not isinstance(samples, int):
        return cut
    other = fastcopy(other, num_samples=samples, duration=samples / other.sampling_rate)
    return fastcopy(cut, custom={**custom, "audio_b": other})


def export_shar(manifests: Sequence[str], out: str | Path, shard_size: int = 1000, audio_format: str = "flac",
                audio_root: str | None = None, allow_outside_root: bool = False) -> dict:
    """Writes the good cuts of ``manifests`` to ``out`` as Shar; returns the counts and the shard files."""
    from .audio import AudioConfig
    from .cuts import ManifestCuts
    from .manifest import DEFAULT_MAX_TARGET_CHARS, UNREADABLE_AUDIO, check_manifest_file, default_known_tasks

    for manifest in manifests:
        check_manifest_file(manifest)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out: {out} is not empty (Shar shards are written into an empty folder)")
    out.mkdir(parents=True, exist_ok=True)
    rejects: dict[str, int] = {}
    first_reject: list[str] = []

    def on_reject(reject) -> None:
        rejects[reject.reason] = rejects.get(reject.reason, 0) + 1
        if not first_reject:
            first_reject.append(f"{reject.manifest}:{reject.line}: {reject.reason}")

    # lengths are a training run's concern (max_seconds there): nothing is cut or refused for length here
    audio = AudioConfig(sample_rate=16000, min_seconds=0.0, max_seconds=float("inf"), on_too_long="cut")
    source = ManifestCuts(list(manifests), audio, on_reject, audio_root=audio_root,
                          allow_outside_root=allow_outside_root, known_tasks=default_known_tasks(),
                          max_target_chars=DEFAULT_MAX_TARGET_CHARS)
    counted = {"cuts": 0}

    def good_cuts() -> Iterator[MonoCut]:
        for cut in source:
            custom = {k: v for k, v in cut.custom.items() if k != "origin"}  # the reader's, not the data's
            if isinstance(custom.get("audio_b"), Recording):
                custom["audio_b_samples"] = custom["audio_b"].num_samples
            counted["cuts"] += 1
            yield MonoCut(id=cut.id, start=cut.start, duration=cut.duration, channel=cut.channel,
                          recording=cut.recording, supervisions=cut.supervisions, custom=custom)

    fields = {"recording": audio_format, "audio_b": audio_format}  # a cut without a clip B gets a placeholder
    # fault_tolerant: a cut whose audio does not decode is skipped (Lhotse warns, naming it); counted below
    shards = CutSet(good_cuts()).to_shar(str(out), fields=fields, shard_size=shard_size, warn_unused_fields=False,
                                         fault_tolerant=True)
    written = sum(sum(1 for _ in CutSet.from_jsonl_lazy(p)) for p in shards.get("cuts", []))
    if counted["cuts"] > written:
        rejects[UNREADABLE_AUDIO] = rejects.get(UNREADABLE_AUDIO, 0) + counted["cuts"] - written
    if written == 0:
        raise ValueError(f"{', '.join(manifests)}: no valid samples to write ({sum(rejects.values())} rejected"
                         f"{'; first: ' + first_reject[0] if first_reject else ''})")
    return {"cuts": written, "rejected": rejects, "first_reject": first_reject[0] if first_reject else None,
            "shards": {k: [str(p) for p in v] for k, v in shards.items()}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifests", nargs="+", help="cut manifests (*.cuts.jsonl.gz) or JSONL manifests")
    parser.add_argument("--out", required=True, help="an empty folder for the shards")
    parser.add_argument("--shard-size", type=int, default=1000, help="cuts per shard (default 1000)")
    parser.add_argument("--audio-format", default="flac", choices=("flac", "wav", "opus", "mp3"),
                        help="flac (default, lossless at 16 bits) or wav; opus and mp3 are lossy")
    parser.add_argument("--audio-root", default=None, help="as data.init_args.audio_root in a YAML")


def run(args: argparse.Namespace) -> int:
    summary = export_shar(args.manifests, args.out, args.shard_size, args.audio_format, args.audio_root)
    rejected = sum(summary["rejected"].values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["rejected"].items()))
    first = f"; first: {summary['first_reject']}" if summary["first_reject"] else ""
    detail = f" ({reasons}{first})" if rejected else ""
    shards = len(summary["shards"].get("cuts", []))
    print(f"{summary['cuts']} cuts -> {args.out} ({shards} shards); {rejected} rejected{detail}")
    return 0
