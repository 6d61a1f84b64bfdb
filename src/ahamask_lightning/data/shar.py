"""Lhotse Shar: a corpus's cuts packed with their audio into tar shards.

Many small audio files are slow to open on network file systems and object stores; Lhotse's Shar
format keeps the cuts (``cuts.NNNNNN.jsonl.gz``) beside tar shards of their audio
(``recording.NNNNNN.tar``, and ``audio_b.NNNNNN.tar`` for the second clip of a speaker-verification
pair), read sequentially.

* ``ahamask data shar MANIFEST... --out DIR`` (:func:`export_shar`) reads the manifests through the
  data layer (:class:`~.cuts.ManifestCuts`: every check of a training run; a bad line is skipped,
  counted and named), decodes each cut's audio with the loader's checks (``dataset.cut_parts``:
  a missing, truncated, empty or NaN/inf clip is skipped and counted under that reason, never
  written) and writes the good cuts with Lhotse's ``CutSet.to_shar``: only each cut's own segment
  of audio, FLAC by default (lossless at 16 bits).
* A directory in that layout is a manifest like any other (``data.init_args.train: [DIR]``):
  :class:`~.cuts.ManifestCuts` reads it with ``CutSet.from_shar`` (:func:`iter_shar`) and applies
  the same text, task and length checks; the audio travels in memory with its cut and is decoded in
  the loader workers (``dataset.cut_audio``).

Shards elsewhere (object stores, HTTP, a command). A Shar index, a JSON file whose name ends in
``.shar.json``, is Lhotse's ``fields`` argument written down: ``{"cuts": [...], "recording": [...],
"audio_b": [...]}``, one source per shard in each list, given to ``CutSet.from_shar(fields=...)``.
A source is a URL Lhotse opens with ``smart_open`` (``s3://``, ``gs://``, ``https://``; install
``smart_open`` with the cloud extra you need), a ``pipe:COMMAND`` whose standard output is the
shard, or a path (relative paths are taken from the index's folder). The index file itself is
local and is checked before training starts (its shape, and that its local paths exist); remote
sources are first opened by the loader workers. ``ahamask data shar ... --index FILE
--index-prefix PREFIX`` writes one, naming each shard ``PREFIX`` + its file name (for example
``s3://bucket/corpus/`` before uploading the folder there).

Several training ranks. Under DDP, when every training manifest is Shar with at least as many
shards as ranks, each rank reads only its own shards (:class:`~.cuts.ManifestCuts`' ``shard_split``:
the shard order is reshuffled every epoch and dealt out round-robin) instead of reading every shard
and keeping every n-th batch; the ranks end each epoch together when the first runs out (the
loader's ``sync_stop``), so the rest of that epoch's shards on the others waits for a later epoch.

Clip B of a pair. Lhotse's Shar writer declares a custom recording as long as its cut (it assumes
custom audio aligned with the cut) while writing the whole clip for an unaligned one, which a pair's
clip B is (``audio_b_unaligned``). The export therefore records B's length in the cut
(``audio_b_samples``) and :func:`iter_shar` gives the recording that length back.

Libraries checked: Lhotse writes and reads the format; this module adds the checks, the length of
clip B, and the CLI.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from lhotse import CutSet, MonoCut, Recording, fastcopy

SHAR_LAYOUT = "a Lhotse Shar directory (cuts.000000.jsonl.gz beside recording.000000.tar, ...)"
INDEX_SUFFIX = ".shar.json"


def _is_cut_shard(name: str) -> bool:
    return name.startswith("cuts.") and ".jsonl" in name


def _is_url(source: str) -> bool:
    return "://" in source and not source.startswith("pipe:")


def is_shar_dir(path: str) -> bool:
    """Whether ``path`` is a directory holding Shar cut shards."""
    return os.path.isdir(path) and any(_is_cut_shard(name) for name in os.listdir(path))


def is_shar_index(path: str) -> bool:
    """Whether ``path`` names a Shar index (see the module docstring)."""
    return str(path).endswith(INDEX_SUFFIX)


def is_shar(path: str) -> bool:
    """A Shar directory or index: read with ``CutSet.from_shar``."""
    return is_shar_index(path) or is_shar_dir(path)


def read_shar_index(path: str) -> dict[str, list[str]]:
    """The ``fields`` of a Shar index, relative paths resolved; one line naming the file and the key
    when it is not one (a missing local shard included)."""
    try:
        fields = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: Shar index not found") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable Shar index ({err}); expected a JSON object of shard lists") \
            from None
    expected = 'expected {"cuts": [shard, ...], "recording": [shard, ...], ...} with one source per shard'
    if not isinstance(fields, dict) or not isinstance(fields.get("cuts"), list) or not fields["cuts"]:
        raise ValueError(f"{path}: key 'cuts': missing or empty; {expected}")
    if "recording" not in fields:
        raise ValueError(f"{path}: key 'recording': missing (the audio shards); {expected}")
    folder = Path(path).parent
    out: dict[str, list[str]] = {}
    for field, sources in fields.items():
        if not isinstance(sources, list) or len(sources) != len(fields["cuts"]) or \
                not all(isinstance(x, str) and x for x in sources):
            raise ValueError(f"{path}: key {field!r}: {len(sources) if isinstance(sources, list) else 'no'} "
                             f"sources for {len(fields['cuts'])} cut shards; {expected}")
        out[field] = []
        for source in sources:
            if _is_url(source) and importlib.util.find_spec("smart_open") is None:
                raise ValueError(f"{path}: key {field!r}: {source} is a URL, which Lhotse opens with smart_open: "
                                 "pip install 'smart_open[s3]' (or the extra of that store)")
            if not _is_url(source) and not source.startswith("pipe:"):  # a path; Lhotse opens the rest
                local = Path(source) if os.path.isabs(source) else folder / source
                if not local.is_file():
                    raise FileNotFoundError(f"{path}: key {field!r}: shard {source} not found (looked at {local})")
                source = str(local)
            out[field].append(source)
    return out


def write_shar_index(shards: dict[str, list[str]], index: str | Path, prefix: str) -> None:
    """A Shar index naming each shard ``prefix`` + its file name."""
    fields = {field: [prefix + Path(p).name for p in paths] for field, paths in shards.items()}
    Path(index).write_text(json.dumps(fields, indent=1) + "\n")


def shar_fields(path: str) -> dict[str, list[str]]:
    """Each field's shard sources, in shard order, of a Shar directory (grouped by file-name prefix,
    as ``CutSet.from_shar(in_dir=...)`` groups them) or index."""
    if is_shar_index(path):
        return read_shar_index(path)
    names = sorted(os.listdir(path))
    fields: dict[str, list[str]] = {"cuts": [n for n in names if _is_cut_shard(n)]}
    for name in names:
        field = name.split(".")[0]
        if field != "cuts":
            fields.setdefault(field, []).append(name)
    for field, shard_names in fields.items():
        if len(shard_names) != len(fields["cuts"]):  # e.g. a copy cut short
            raise ValueError(f"{path}: {len(shard_names)} {field} shards for {len(fields['cuts'])} cut shards; "
                             f"expected {SHAR_LAYOUT} with one of each per shard")
    return {field: [os.path.join(path, n) for n in shard_names] for field, shard_names in fields.items()}


def shard_count(path: str) -> int:
    """How many shards a Shar directory or index holds."""
    return len(shar_fields(path)["cuts"])


def iter_shar(path: str, limit: int | None = None, shards: Sequence[int] | None = None,
              ) -> Iterator[tuple[int, MonoCut]]:
    """(1-based position, cut) for the cuts of a Shar directory or index, in shard order (or of the
    ``shards`` given, in that order: nothing else is opened), at most ``limit``. A shard Lhotse
    cannot read stops the iteration with one line naming the manifest."""
    if shards is not None and not shards:
        return
    position = 0
    fields = shar_fields(path)
    if shards is not None:
        fields = {field: [sources[i] for i in shards] for field, sources in fields.items()}
    cuts = iter(CutSet.from_shar(fields=fields))
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
                audio_root: str | None = None, allow_outside_root: bool = False, index: str | None = None,
                index_prefix: str | None = None, sample_rate: int | None = None) -> dict:
    """Writes the good cuts of ``manifests`` to ``out`` as Shar; returns the counts and the shard files.
    ``index``: also a Shar index there, each shard named ``index_prefix`` (default: ``out``'s path) + its name.
    ``sample_rate``: the audio resampled to it before writing (Lhotse's resampler, torchaudio's sinc
    filter as in training), so the loader neither decodes nor resamples the extra samples each epoch."""
    from .audio import AudioConfig, AudioError
    from .cuts import ManifestCuts, origin
    from .dataset import cut_parts
    from .manifest import (
        DEFAULT_MAX_TARGET_CHARS,
        UNREADABLE_AUDIO,
        Reject,
        check_manifest_file,
        default_known_tasks,
    )
    from .rejects import RejectSink

    for manifest in manifests:
        check_manifest_file(manifest)
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"--sample-rate: {sample_rate}; expected a positive rate in Hz, e.g. 16000")
    if index is not None and not is_shar_index(index):
        raise ValueError(f"--index: {index}: expected a file name ending in {INDEX_SUFFIX}")
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
    audio_rejects = RejectSink(None, "shar", "export")

    def good_cuts() -> Iterator[MonoCut]:
        for cut in source:
            # The audio is decoded and checked as a training run would (missing, truncated, empty,
            # NaN/inf) before Lhotse writes it: its WAV writer would turn NaN/inf into full-scale
            # samples, and a FLAC it cannot write would be counted as unreadable, not as what it is.
            # At the cut's own rate: nothing is resampled only to be checked.
            check = AudioConfig(sample_rate=int(cut.sampling_rate), min_seconds=0.0, max_seconds=float("inf"),
                                on_too_long="cut")
            try:
                cut_parts(cut, check)
            except AudioError as err:
                # logged in one line naming manifest:line, as the loader does; the summary's "first"
                # stays the first line the manifest reader refused
                rejects[err.reason] = rejects.get(err.reason, 0) + 1
                audio_rejects(Reject(*origin(cut), err.reason, cut.id, err.detail), 0)
                continue
            custom = {k: v for k, v in cut.custom.items() if k != "origin"}  # the reader's, not the data's
            if isinstance(custom.get("audio_b"), Recording):
                if sample_rate is not None:
                    custom["audio_b"] = custom["audio_b"].resample(sample_rate)
                custom["audio_b_samples"] = custom["audio_b"].num_samples
            counted["cuts"] += 1
            kept = MonoCut(id=cut.id, start=cut.start, duration=cut.duration, channel=cut.channel,
                           recording=cut.recording, supervisions=cut.supervisions, custom=custom)
            yield kept.resample(sample_rate) if sample_rate is not None else kept

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
    if index is not None:
        write_shar_index(shards, index, index_prefix if index_prefix is not None else f"{out.resolve()}/")
    return {"cuts": written, "rejected": rejects, "first_reject": first_reject[0] if first_reject else None,
            "shards": {k: [str(p) for p in v] for k, v in shards.items()}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifests", nargs="+", help="cut manifests (*.cuts.jsonl.gz) or JSONL manifests")
    parser.add_argument("--out", required=True, help="an empty folder for the shards")
    parser.add_argument("--shard-size", type=int, default=1000, help="cuts per shard (default 1000)")
    parser.add_argument("--audio-format", default="flac", choices=("flac", "wav", "opus", "mp3"),
                        help="flac (default, lossless at 16 bits) or wav; opus and mp3 are lossy")
    parser.add_argument("--audio-root", default=None, help="as data.init_args.audio_root in a YAML")
    parser.add_argument("--sample-rate", type=int, default=None, help="resample the audio to this rate before "
                        "writing (e.g. 16000, the models' rate; default: keep each file's rate)")
    parser.add_argument("--index", default=None, help=f"also write a Shar index (NAME{INDEX_SUFFIX}), a manifest "
                        "that names the shards where they will be read from")
    parser.add_argument("--index-prefix", default=None, help="what the index puts before each shard's file name "
                        "(e.g. s3://bucket/corpus/; default: the --out folder)")


def run(args: argparse.Namespace) -> int:
    if args.index_prefix is not None and args.index is None:
        raise ValueError("--index-prefix: given without --index (the index is the file the prefix goes into)")
    summary = export_shar(args.manifests, args.out, args.shard_size, args.audio_format, args.audio_root,
                          index=args.index, index_prefix=args.index_prefix, sample_rate=args.sample_rate)
    rejected = sum(summary["rejected"].values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["rejected"].items()))
    first = f"; first: {summary['first_reject']}" if summary["first_reject"] else ""
    detail = f" ({reasons}{first})" if rejected else ""
    shards = len(summary["shards"].get("cuts", []))
    print(f"{summary['cuts']} cuts -> {args.out} ({shards} shards); {rejected} rejected{detail}"
          + (f"; index {args.index}" if args.index else ""))
    return 0
