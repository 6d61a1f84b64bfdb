"""espeak-ng voice discovery: English accents, variant genders, and speaker sampling.

Gender labels are the ground truth of the GR task, so they are read from the variant
definition files themselves (``voices/!v/<name>``, a ``gender male|female`` line) instead of
being hard-coded; variants with no or neutral gender are dropped.
"""

from __future__ import annotations

import functools
import glob
import os
import random
import re
import subprocess
from dataclasses import asdict, dataclass

# Novelty variants (robots, whispers, monsters) whose gender line is not a useful label.
EXCLUDED_VARIANTS = {"Demonic", "UniRobot", "anikaRobot", "whisper", "whisperf", "croak"}
# Native English accents (gmw voices); mbrola voices need extra packages.
PREFERRED_ACCENTS = [
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
]


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: accent x variant x pitch (espeak -p, 0-99)."""

    voice: str
    variant: str
    gender: str
    pitch: int

    @property
    def id(self) -> str:
        return f"{self.voice}+{self.variant}@p{self.pitch}"

    def to_dict(self) -> dict:
        return {"id": self.id, **asdict(self)}


@functools.lru_cache(maxsize=1)
def espeak_version() -> str:
    """The espeak-ng version string (recorded in the summary for reproducibility)."""
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"text-to-speech:\s*(\S+)", out)
    return m.group(1) if m else out.strip()


@functools.lru_cache(maxsize=1)
def espeak_data_dir() -> str:
    """Locate espeak-ng-data, from ``espeak-ng --version`` or the usual library paths."""
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"Data at:\s*(\S+)", out)
        if m and os.path.isdir(m.group(1)):
            return m.group(1)
    except OSError:
        pass
    for cand in glob.glob("/usr/lib/*/espeak-ng-data") + glob.glob("/usr/*/share/espeak-ng-data"):
        if os.path.isdir(cand):
            return cand
    raise FileNotFoundError("espeak-ng-data not found; install espeak-ng")


def read_variant_gender(name: str, data_dir: str | None = None) -> str | None:
    """Gender ('male'/'female') declared in variant file ``!v/<name>``, or None if absent/neutral."""
    path = os.path.join(data_dir or espeak_data_dir(), "voices", "!v", name)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].lower() == "gender":
                g = parts[1].lower()
                return g if g in ("male", "female") else None
    return None


def variant_genders(data_dir: str | None = None) -> dict[str, str]:
    """All usable variants with a male/female gender line, sorted by name."""
    vdir = os.path.join(data_dir or espeak_data_dir(), "voices", "!v")
    out: dict[str, str] = {}
    for name in sorted(os.listdir(vdir)):
        if name in EXCLUDED_VARIANTS or " " in name:
            continue
        g = read_variant_gender(name, data_dir)
        if g is not None:
            out[name] = g
    return out


@functools.lru_cache(maxsize=1)
def english_accents() -> tuple[str, ...]:
    """Preferred English accents that this espeak-ng install provides (gmw voices only)."""
    out = subprocess.run(["espeak-ng", "--voices=en"], capture_output=True, text=True, check=False).stdout
    have = set()
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and cols[4].startswith("gmw/"):
            have.add(cols[1])
    accents = tuple(a for a in PREFERRED_ACCENTS if a in have)
    return accents or ("en",)


def split_variants(
    genders: dict[str, str], rng: random.Random, ood_frac: float = 0.25
) -> tuple[list[str], list[str]]:
    """Gender-balanced in-domain variants and a held-out (both genders) OOD set.

    Per gender, a shuffled ``ood_frac`` share (at least one, if the gender has two or more)
    is held out; the in-domain set keeps the same number of variants of each gender.
    """
    by_g = {g: sorted(v for v, gg in genders.items() if gg == g) for g in ("male", "female")}
    for names in by_g.values():
        rng.shuffle(names)
    n_min = min(len(v) for v in by_g.values())
    if n_min == 0:
        raise ValueError(f"need variants of both genders, got {genders}")
    k_ood = max(1, round(ood_frac * n_min)) if n_min >= 2 else 0
    n_in = n_min - k_ood
    ood = sorted(by_g["male"][:k_ood] + by_g["female"][:k_ood])
    ind = sorted(by_g["male"][k_ood:k_ood + n_in] + by_g["female"][k_ood:k_ood + n_in])
    return ind, ood


def make_speakers(
    variants: list[str], genders: dict[str, str], rng: random.Random, per_variant: int = 2
) -> list[Speaker]:
    """``per_variant`` speakers per variant, each with its own accent and pitch offset."""
    accents = list(english_accents())
    speakers: list[Speaker] = []
    for v in variants:
        acc = rng.sample(accents, k=min(per_variant, len(accents)))
        while len(acc) < per_variant:
            acc.append(rng.choice(accents))
        offsets = rng.sample([-15, -10, -5, 0, 5, 10, 15], k=per_variant)
        for a, off in zip(acc, offsets):
            speakers.append(Speaker(voice=a, variant=v, gender=genders[v], pitch=50 + off))
    return speakers
