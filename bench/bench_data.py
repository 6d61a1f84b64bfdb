"""Throughput of the data layer: decoded, resampled and collated utterances per second per worker.

Writes a pool of 10 s clips at 22.05 kHz and 44.1 kHz (16-bit WAV), a manifest cycling over
them, and times full epochs of ``ManifestDataModule`` on its Lhotse path (manifest -> lazy
CutSet -> ``SimpleCutSampler`` in the main process -> decode -> first channel -> resample to
16 kHz -> pad -> ``collate_audio``). ``--manifests jsonl cuts`` times the user JSONL manifest
(converted to cuts as it is read, headers probed) and the same samples as a Lhotse cut manifest
(``CutSet.to_file``, read directly); ``shar`` and ``shar-wav`` the same samples packed by
``ahamask data shar`` (FLAC, its default, or WAV in tar shards, read sequentially, decoded from
memory), and ``shar-16k`` FLAC shards written at 16 kHz (``--sample-rate 16000``: nothing to
resample on load). The pool is small and re-read, so the OS cache serves the bytes: this measures
CPU cost, not disk. ``--workers 0`` runs in-process with one torch thread,
like a dataloader worker; N > 0 uses N worker processes and divides the rate by N. Each
configuration runs ``--repeats`` epochs, interleaved with the others; the median is reported.
Beside each manifest it times the batch planning alone (the sampler in the main process, which
for Shar reads the shards, audio bytes included): the rate the main process can feed workers at.

    python bench/bench_data.py --clips 400 --out bench_data.json
    python bench/bench_data.py --smoke
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lhotse
import lightning
import numpy as np
import soundfile as sf
import torch
from lhotse import CutSet

from ahamask_lightning.data import ManifestCuts, ManifestDataModule, collate_audio
from ahamask_lightning.data.audio import AudioConfig


def make_pool(root: Path, clips: int, pool: int, seconds: float, rates: list[int]) -> str:
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(pool):
        rate = rates[i % len(rates)]
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.3 * np.sin(2 * np.pi * (200 + 10 * i) * t) + 0.05 * rng.standard_normal(t.size)
        name = f"audio/clip{i}_{rate}.wav"
        sf.write(root / name, wave.astype("float32"), rate, subtype="PCM_16")
        names.append(name)
    man = root / "bench.jsonl"
    with open(man, "w") as fh:
        for i in range(clips):
            fh.write(json.dumps({"id": f"u{i}", "audio": names[i % pool], "task": "asr", "text": "x",
                                 "duration": seconds}) + "\n")
    return str(man)


def write_cut_manifest(manifest: str, root: str) -> str:
    """The same samples as a Lhotse cut manifest (what a corpus preparer writes)."""
    cuts = ManifestCuts([manifest], AudioConfig(), on_reject=print, audio_root=root, known_tasks={"asr"})
    out = str(Path(root) / "bench.cuts.jsonl.gz")
    CutSet(cuts).to_file(out)
    return out


def write_shar(manifest: str, root: str, audio_format: str, sample_rate: int | None = None) -> str:
    """The same samples as Lhotse Shar shards (what ``ahamask data shar`` writes; ``sample_rate``:
    with ``--sample-rate``)."""
    from ahamask_lightning.data.shar import export_shar

    out = str(Path(root) / f"shar-{audio_format}-{sample_rate or 'source'}")
    export_shar([manifest], out, audio_root=root, audio_format=audio_format, sample_rate=sample_rate)
    return out


def train_loader(manifest: str, root: str, workers: int, batch_size: int):
    """The training loader of ``ManifestDataModule`` on ``manifest``, no shuffling (the same batches every run)."""
    dm = ManifestDataModule(train=manifest, audio_root=root, batch_size=batch_size, num_workers=workers,
                            shuffle_buffer=1, known_tasks={"asr"}, collate_fn=collate_audio)
    return dm.train_dataloader()


def epoch_rate(manifest: str, root: str, workers: int, batch_size: int) -> tuple[int, float, float]:
    """(utterances, audio seconds, wall seconds) of one full epoch."""
    start = time.perf_counter()  # building the loader counts as part of the epoch
    loader = train_loader(manifest, root, workers, batch_size)
    n, seconds = 0, 0.0
    for batch in loader:
        n += len(batch["ids"])
        seconds += float(batch["lengths"].sum()) / 16000
    return n, seconds, time.perf_counter() - start


def planning_rate(manifest: str, root: str, batch_size: int) -> float:
    """Utterances per second the main process plans batches at (the sampler alone, nothing decoded)."""
    loader = train_loader(manifest, root, 0, batch_size)
    loader.cuts.set_epoch(0)
    start = time.perf_counter()
    n = sum(len(batch) for batch in loader.sampler)
    return n / (time.perf_counter() - start)


def summarise(workers: int, kind: str, runs: list[tuple[int, float, float]]) -> dict[str, float]:
    n, seconds = runs[0][0], runs[0][1]
    wall = statistics.median(r[2] for r in runs)
    per_worker = n / wall / max(workers, 1)
    return {"workers": workers, "manifest": kind, "utterances": n, "repeats": len(runs), "wall_s": round(wall, 3),
            "utt_per_s": round(n / wall, 2), "utt_per_s_per_worker": round(per_worker, 2),
            "audio_s_per_s_per_worker": round(seconds / wall / max(workers, 1), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=300, help="utterances per epoch")
    ap.add_argument("--pool", type=int, default=16, help="distinct files written (re-read in a cycle)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", type=int, nargs="+", default=[22050, 44100])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    kinds = ["jsonl", "cuts", "shar", "shar-wav", "shar-16k"]
    ap.add_argument("--manifests", nargs="+", choices=kinds, default=kinds)
    ap.add_argument("--repeats", type=int, default=5, help="epochs per configuration (median reported)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--smoke", action="store_true", help="tiny run (< 10 s) to check the script works")
    ap.add_argument("--out", type=str, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if args.smoke:
        args.clips, args.pool, args.workers, args.repeats = 12, 4, [0], 1
    torch.set_num_threads(1)  # dataloader workers run with one thread; measure the same way
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = make_pool(Path(tmp), args.clips, args.pool, args.seconds, args.rates)
        paths = {"jsonl": jsonl, "cuts": write_cut_manifest(jsonl, tmp) if "cuts" in args.manifests else None,
                 "shar": write_shar(jsonl, tmp, "flac") if "shar" in args.manifests else None,
                 "shar-wav": write_shar(jsonl, tmp, "wav") if "shar-wav" in args.manifests else None,
                 "shar-16k": write_shar(jsonl, tmp, "flac", 16000) if "shar-16k" in args.manifests else None}
        configs = [(w, kind) for w in args.workers for kind in args.manifests]
        runs: dict[tuple[int, str], list] = {c: [] for c in configs}
        planning: dict[str, list[float]] = {kind: [] for kind in args.manifests}
        for _ in range(args.repeats):  # interleaved: a load change on the shared machine hits every configuration
            for workers, kind in configs:
                runs[(workers, kind)].append(epoch_rate(paths[kind], tmp, workers, args.batch_size))
            for kind in args.manifests:
                planning[kind].append(planning_rate(paths[kind], tmp, args.batch_size))
        planning_utt_per_s = {kind: round(statistics.median(r), 1) for kind, r in planning.items()}
        print("batch planning alone (main process), utt/s: " +
              ", ".join(f"{k} {v}" for k, v in planning_utt_per_s.items()))
        for workers, kind in configs:
            res = summarise(workers, kind, runs[(workers, kind)])
            results.append(res)
            print(f"workers={workers} {kind}: {res['utterances']} x {args.seconds:g} s clips "
                  f"({'/'.join(map(str, args.rates))} Hz -> 16 kHz), median of {res['repeats']}: {res['wall_s']} s = "
                  f"{res['utt_per_s']} utt/s, {res['utt_per_s_per_worker']} utt/s/worker "
                  f"({res['audio_s_per_s_per_worker']} audio s/s/worker)")
        sizes = {kind: round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20, 1)
                 for kind, path in paths.items() if kind.startswith("shar") and path}
        audio_mib = round(sum(f.stat().st_size for f in (Path(tmp) / "audio").iterdir()) / 2**20, 1)
        print(f"on disk: the {args.pool} distinct WAVs {audio_mib} MiB; " +
              ", ".join(f"{k} {v} MiB for the {args.clips} clips" for k, v in sizes.items()))
    report = {"bench": "data", "clips": args.clips, "shar_mib": sizes, "clip_seconds": args.seconds, "source_rates": args.rates,
              "batch_size": args.batch_size, "smoke": args.smoke, "results": results,
              "planning_utt_per_s": planning_utt_per_s,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                          "lhotse": lhotse.__version__, "lightning": lightning.__version__,
                          "soundfile": sf.__version__}}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
