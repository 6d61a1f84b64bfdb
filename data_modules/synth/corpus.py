"""SynthSpeech corpus: plan (deterministic from the seed), render in parallel, write manifests.

All random decisions are made up front in the parent process from ``random.Random`` streams
derived from the seed; rendering is pure (text/voice -> bytes), so the same seed gives the
same manifests and the same audio bytes regardless of worker count or completion order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections import defaultdict
from multiprocessing.pool import ThreadPool
from pathlib import Path

from . import grammar, scenes
from . import voices as voicelib
from .speech import SAMPLE_RATE, render

SPLITS = ("train", "val", "test", "test_ood")
SPEECH_TASKS = ("asr", "gr", "src", "gr_asr", "json", "asv")
TASKS = SPEECH_TASKS + ("aac",)
# speaking-rate classes: base words/min, jitter, and word-count range (keeps 1.2-3.5 s)
RATES = {"slow": (120, 8, 3, 5), "normal": (165, 10, 4, 7), "fast": (230, 12, 5, 8)}


def _rng(seed: int, stream: str) -> random.Random:
    """Independent, reproducible random stream per purpose (adding one never shifts another)."""
    return random.Random(f"synthspeech/{seed}/{stream}")


def _split_sizes(n: int, frac: float = 0.1) -> tuple[int, int, int]:
    """(train, val, test) sizes, ~80/10/10, with non-empty val/test once n >= 3."""
    k = max(1, round(frac * n)) if n >= 3 else 0
    return n - 2 * k, k, k


def _job_path(uid: str, payload: dict) -> str:
    """File name carries a hash of what is rendered, so resuming into a reused dir is safe."""
    h = hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]
    return f"audio/{uid}-{h}.wav"


def plan_utterances(n: int, speakers: list[voicelib.Speaker], rng: random.Random, prefix: str) -> list[dict]:
    """n utterances, cycling speakers and rate classes so both are balanced."""
    if n and not speakers:
        raise ValueError("no speakers to plan utterances for")
    spk = list(speakers)
    rng.shuffle(spk)
    rate_names = list(RATES)
    rates = [rate_names[i % 3] for i in range(n)]
    rng.shuffle(rates)  # exactly balanced overall, independent of the speaker cycle
    utts = []
    for i in range(n):
        s, rate = spk[i % len(spk)], rates[i]
        base, jit, lo, hi = RATES[rate]
        text = grammar.sentence(rng, lo, hi)
        payload = {"text": text, "voice": s.voice, "variant": s.variant,
                   "rate": base + rng.randint(-jit, jit), "pitch": s.pitch}
        uid = f"{prefix}{i:05d}"
        utts.append({"id": uid, "kind": "speech", "path": _job_path(uid, payload), **payload,
                     "rate_class": rate, "speaker": s.id, "gender": s.gender})
    return utts


def plan_scenes(n: int, rng: random.Random) -> list[dict]:
    """n sound scenes with captions."""
    out = []
    for i in range(n):
        caption, events = scenes.sample_scene(rng)
        uid = f"s{i:05d}"
        path = _job_path(uid, {"events": [e["sox"] for e in events]})
        out.append({"id": uid, "kind": "scene", "path": path, "caption": caption, "events": events})
    return out


def _speech_meta(u: dict) -> dict:
    return {"utt": u["id"], "speaker": u["speaker"], "voice": u["voice"], "variant": u["variant"],
            "gender": u["gender"], "rate": u["rate_class"], "wpm": u["rate"], "pitch": u["pitch"],
            "words": len(u["text"].split())}


def _speech_lines(u: dict) -> dict[str, dict]:
    """The five single-utterance task lines that share one wav."""
    gender = u["gender"].capitalize()
    targets = {
        "asr": u["text"], "gr": gender, "src": u["rate_class"], "gr_asr": f"{gender}|{u['text']}",
        "json": json.dumps({"ASR": u["text"], "GR": gender}),
    }
    return {t: {"id": f"{t}-{u['id']}", "audio": u["path"], "task": t, "text": y,
                "duration": u["duration"], "meta": _speech_meta(u)} for t, y in targets.items()}


def asv_pairs(
    utts: list[dict], rng: random.Random, split: str, n_each: int | None = None,
    hard_share: float | None = None, tag: str = "",
) -> list[dict]:
    """Balanced same/different-speaker pairs.

    ``n_each`` pairs of each kind (default: a quarter of the utterances, so about one pair per
    two utterances). ``hard_share``: the share of different-speaker pairs drawn from speakers of
    the same gender (default: drawn from everyone, so about half are same-gender). Gender alone
    then answers fewer pairs, which is where a model that only hears gender fails.
    """
    by_spk: dict[str, list[dict]] = defaultdict(list)
    for u in utts:
        by_spk[u["speaker"]].append(u)
    multi = [u for u in utts if len(by_spk[u["speaker"]]) >= 2]
    if n_each is None:
        n_each = len(utts) // 4
    if not multi or len(by_spk) < 2:
        n_each = 0
    others: dict[tuple[str, str | None], list[dict]] = {}  # same order as a scan of utts

    def other_speaker(a: dict, gender: str | None) -> dict:
        key = (a["speaker"], gender)
        if key not in others:
            others[key] = [v for v in utts if v["speaker"] != a["speaker"]
                           and (gender is None or v["gender"] == gender)]
        if not others[key]:  # no other speaker of this gender: any other speaker
            return other_speaker(a, None)
        return rng.choice(others[key])

    pairs: list[tuple[dict, dict, bool]] = []
    for _ in range(n_each):
        a = rng.choice(multi)
        b = rng.choice([v for v in by_spk[a["speaker"]] if v is not a])
        pairs.append((a, b, True))
        a = rng.choice(utts)
        hard = hard_share is not None and rng.random() < hard_share
        pairs.append((a, other_speaker(a, a["gender"] if hard else None), False))
    rng.shuffle(pairs)
    lines = []
    for k, (a, b, same) in enumerate(pairs):
        ma, mb = _speech_meta(a), _speech_meta(b)
        meta = {key: [ma[key], mb[key]] for key in ma}
        lines.append({"id": f"asv-{split}{tag}-{k:05d}", "audio": [a["path"], b["path"]], "task": "asv",
                      "text": "Yes" if same else "No", "duration": round(a["duration"] + b["duration"], 4),
                      "meta": {**meta, "durations": [a["duration"], b["duration"]]}})
    return lines


def _render_all(jobs: list[dict], out: Path, workers: int) -> dict[str, float]:
    """Render jobs with a pool; each job spawns its own espeak-ng/sox processes."""
    payloads = [{**j, "path": str(out / j["path"])} for j in jobs]
    # longest jobs (scenes: several sox calls) first for better load balance
    payloads.sort(key=lambda j: j["kind"] != "scene")
    with ThreadPool(max(1, workers)) as pool:
        return dict(pool.imap_unordered(render, payloads, chunksize=8))


def synthesize(
    out: str | Path,
    n: int = 3000,
    seed: int = 0,
    voices: list[str] | None = None,
    n_scenes: int | None = None,
    workers: int = 2,
    asr_extra: int = 0,
) -> dict:
    """Generate the corpus into ``out`` and return the summary (counts per split/task).

    ``asr_extra`` more in-domain training utterances go to ``train/asr_extra.jsonl`` only (ASR
    pretraining data; no sentence of val, test or test_ood among them). They come from their own
    random stream, so every other manifest is the same with or without them.
    """
    check_counts({"n": n, "n_scenes": n_scenes, "asr_extra": asr_extra})
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    genders = voicelib.variant_genders()
    if voices:
        unknown = sorted(set(voices) - set(genders))
        if unknown:
            raise ValueError(f"unknown or genderless variants {unknown}; available: {sorted(genders)}")
        genders = {v: g for v, g in genders.items() if v in set(voices)}
    ind_vars, ood_vars = voicelib.split_variants(genders, _rng(seed, "variants"))
    spk_rng = _rng(seed, "speakers")
    spk_in = voicelib.make_speakers(ind_vars, genders, spk_rng)
    spk_ood = voicelib.make_speakers(ood_vars, genders, spk_rng)
    n_ood = round(0.1 * n) if spk_ood else 0
    n_scenes = n // 10 if n_scenes is None else n_scenes

    utts = plan_utterances(n, spk_in, _rng(seed, "utts"), "u")
    utts_ood = plan_utterances(n_ood, spk_ood, _rng(seed, "utts_ood"), "o")
    scns = plan_scenes(n_scenes, _rng(seed, "scenes"))
    split_rng = _rng(seed, "splits")
    speech_splits = _assign(utts, split_rng)
    speech_splits["test_ood"] = utts_ood
    held_out = {u["text"] for split in ("val", "test", "test_ood") for u in speech_splits[split]}
    extra = [u for u in plan_utterances(asr_extra, spk_in, _rng(seed, "utts_extra"), "x")
             if u["text"] not in held_out]

    durs = _render_all(utts + utts_ood + scns + extra, out, workers)
    for item in utts + utts_ood + scns + extra:
        item["duration"] = round(durs[item["id"]], 4)
    scene_splits = _assign(scns, split_rng)

    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        lines: dict[str, list[dict]] = defaultdict(list)
        for u in speech_splits[split]:
            for t, line in _speech_lines(u).items():
                lines[t].append(line)
        lines["asv"] = asv_pairs(speech_splits[split], _rng(seed, f"asv/{split}"), split)
        if split == "train":
            # a denser, harder pair set for pretraining (TinyLALM stages 4-5); asv.jsonl is unchanged
            lines["asv_dense"] = asv_pairs(speech_splits[split], _rng(seed, "asv_dense/train"), split,
                                           n_each=2 * len(speech_splits[split]), hard_share=0.75,
                                           tag="-dense")
            if extra:
                lines["asr_extra"] = [_speech_lines(u)["asr"] for u in extra]
        if split != "test_ood":
            lines["aac"] = [{"id": f"aac-{s['id']}", "audio": s["path"], "task": "aac", "text": s["caption"],
                             "duration": s["duration"],
                             "meta": {"events": [e["phrase"] for e in s["events"]],
                                      "n_events": len(s["events"])}} for s in scene_splits[split]]
        mdir = out / "manifests" / split
        mdir.mkdir(parents=True, exist_ok=True)
        counts[split] = {}
        for t in (*TASKS, "asv_dense", "asr_extra"):
            if t not in lines:
                continue
            with open(mdir / f"{t}.jsonl", "w", encoding="utf-8") as f:
                for line in lines[t]:
                    f.write(json.dumps(line, sort_keys=True) + "\n")
            counts[split][t] = len(lines[t])

    voice_info = {
        "variants": {v: genders[v] for v in sorted(genders)},
        "in_domain": ind_vars, "ood": ood_vars,
        "speakers": {"in_domain": [s.to_dict() for s in spk_in], "ood": [s.to_dict() for s in spk_ood]},
        "accents": list(voicelib.english_accents()),
    }
    summary = {
        "seed": seed, "n": n, "n_ood": n_ood, "n_scenes": n_scenes, "sample_rate": SAMPLE_RATE,
        "espeak_ng": voicelib.espeak_version(), "vocabulary_size": len(grammar.vocabulary()),
        "hours": round(sum(i["duration"] for i in utts + utts_ood + scns + extra) / 3600, 4),
        "counts": counts, "voices": {"in_domain": {v: genders[v] for v in ind_vars},
                                     "ood": {v: genders[v] for v in ood_vars}},
    }
    (out / "voices.json").write_text(json.dumps(voice_info, indent=1, sort_keys=True) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


# the least each count may be: a corpus needs utterances; scenes and extra ASR sentences may be none
COUNT_MINIMUM = {"n": (3, "in-domain utterances (val and test get one each)"), "n_scenes": (0, "sound scenes"),
                 "asr_extra": (0, "extra ASR utterances")}
OPTION_OF_COUNT = {"n": "--n", "n_scenes": "--scenes", "asr_extra": "--asr-extra"}


def check_counts(counts: dict[str, int | None], names: dict[str, str] | None = None) -> None:
    """One ``ValueError`` line for the first count below its minimum (``None``: its default), before
    anything is written: ``n`` 0 would write an empty corpus whose ``summary.json`` counts as present."""
    for key, value in counts.items():
        least, what = COUNT_MINIMUM[key]
        if value is not None and value < least:
            raise ValueError(f"{(names or {}).get(key, key)}: expected {least} or more {what}, got {value}")


def _assign(items: list[dict], rng: random.Random) -> dict[str, list[dict]]:
    """Random ~80/10/10 train/val/test split (manifest order follows the item ids)."""
    order = list(items)
    rng.shuffle(order)
    n_tr, n_va, _ = _split_sizes(len(order))
    parts = {"train": order[:n_tr], "val": order[n_tr:n_tr + n_va], "test": order[n_tr + n_va:]}
    return {k: sorted(v, key=lambda i: i["id"]) for k, v in parts.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options for ``ahamask data synth``."""
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, default=3000, help="in-domain utterances (test_ood adds ~10%%)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same corpus, byte for byte")
    parser.add_argument("--voices", nargs="+", default=None, help="restrict espeak variants, e.g. m1 f2")
    parser.add_argument("--scenes", type=int, default=None, help="sound scenes (default n/10)")
    parser.add_argument("--workers", type=int, default=2, help="parallel synthesis jobs")
    parser.add_argument("--asr-extra", type=int, default=0,
                        help="more in-domain training utterances for ASR only (train/asr_extra.jsonl)")


def run(args: argparse.Namespace) -> int:
    """Synthesize and print one summary line per split/task."""
    check_counts({"n": args.n, "n_scenes": args.scenes, "asr_extra": args.asr_extra}, OPTION_OF_COUNT)
    t0 = time.time()
    summary = synthesize(args.out, n=args.n, seed=args.seed, voices=args.voices,
                         n_scenes=args.scenes, workers=args.workers, asr_extra=args.asr_extra)
    for split, tasks in summary["counts"].items():
        for task, c in tasks.items():
            print(f"{split:9s} {task:7s} {c}")
    print(f"wrote {args.out} ({summary['hours']:.2f} h audio) in {time.time() - t0:.1f}s")
    return 0

