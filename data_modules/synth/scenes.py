"""Non-speech sound scenes (AAC task): 1-3 sox-synthesized events with grammar captions.

Each event's caption words are tied to audible properties (pitch class, length, waveform,
sweep direction, loudness), so captioning is learnable from the audio alone.
"""

from __future__ import annotations

import random

LENGTHS = {"short": (0.12, 0.25), "": (0.3, 0.5), "long": (0.65, 1.0)}


def _length(rng: random.Random) -> tuple[str, float]:
    word = rng.choice(list(LENGTHS))
    lo, hi = LENGTHS[word]
    return word, round(rng.uniform(lo, hi), 3)


def _effects(
    dur: float, wave: str, freq: str, gain: float, pre: float, post: float, extra: list[str] | None = None
) -> list[str]:
    fade_out = f"{min(0.05, dur / 4):.3f}"
    return [
        "synth", f"{dur:.3f}", wave, freq, *(extra or []),
        "fade", "q", "0.01", f"{dur:.3f}", fade_out,
        "gain", "-n", f"{gain:.1f}", "pad", f"{pre:.3f}", f"{post:.3f}",
    ]


def sample_event(rng: random.Random) -> tuple[str, list[str], dict]:
    """One event: (caption phrase, sox effect arguments without padding, meta)."""
    kind = rng.choice(["beep", "buzz", "noise", "pluck", "chirp"])
    length, dur = _length(rng)
    quiet = rng.random() < 0.2
    gain = -20.0 if quiet else -4.0
    words: list[str] = []
    if kind == "beep":
        pitch = rng.choice(["high", "low", ""])
        f = {"high": rng.randint(1800, 3000), "low": rng.randint(220, 450), "": rng.randint(700, 1200)}[pitch]
        words = [length, pitch, "beep"]
        wave, freq = "sine", str(f)
    elif kind == "buzz":
        wave = rng.choice(["square", "sawtooth"])
        pitch = rng.choice(["low", ""])
        f = rng.randint(70, 130) if pitch == "low" else rng.randint(200, 320)
        words = [length, pitch, "harsh buzz" if wave == "sawtooth" else "buzz"]
        freq = str(f)
    elif kind == "noise":
        wave = rng.choice(["whitenoise", "pinknoise", "brownnoise"])
        noun = {"whitenoise": "hiss", "pinknoise": "burst of noise", "brownnoise": "rumble"}[wave]
        words = [length, noun]
        freq = ""
    elif kind == "pluck":
        pitch = rng.choice(["high", "low"])
        f = rng.randint(600, 1000) if pitch == "high" else rng.randint(110, 220)
        words = [pitch, "plucked note"]
        wave, freq = "pluck", str(f)
        length, dur = "", round(rng.uniform(0.4, 0.8), 3)
    else:
        up = rng.random() < 0.5
        lo, hi = rng.randint(300, 600), rng.randint(1500, 3000)
        words = [length, "rising" if up else "falling", "chirp"]
        wave, freq = "sine", f"{lo}-{hi}" if up else f"{hi}-{lo}"
    if quiet:
        words.insert(0, "quiet")
    phrase = " ".join(w for w in words if w)
    article = "an" if phrase[0] in "aeiou" else "a"
    meta = {"kind": kind, "wave": wave, "freq": freq, "dur": dur, "gain": gain, "phrase": phrase}
    return f"{article} {phrase}", [wave, freq, f"{dur:.3f}", f"{gain:.1f}"], meta


CONNECTORS = ["followed by", "then", "and then"]


def sample_scene(rng: random.Random) -> tuple[str, list[dict]]:
    """A scene: caption text and a list of events, each with its full sox effect chain."""
    n = rng.choice([1, 2, 2, 3, 3])
    events: list[dict] = []
    caption_parts: list[str] = []
    for i in range(n):
        phrase, (wave, freq, dur, gain), meta = sample_event(rng)
        pre = round(rng.uniform(0.05, 0.2), 3) if i == 0 else 0.0
        post = round(rng.uniform(0.1, 0.4), 3)
        meta["sox"] = _effects(float(dur), wave, freq, float(gain), pre, post)
        if not freq:  # noise generators take no frequency argument
            meta["sox"].remove("")
        events.append(meta)
        if i:
            caption_parts.append(rng.choice(CONNECTORS))
        caption_parts.append(phrase)
    return " ".join(caption_parts), events
