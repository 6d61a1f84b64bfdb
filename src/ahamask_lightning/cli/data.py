"""``ahamask data synth ...`` (SynthSpeech), ``ahamask data prepare CORPUS --root DIR --out DIR`` and
``ahamask data shar MANIFEST... --out DIR`` (Lhotse Shar shards)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_cmd", required=True)
    from data_modules import synth

    what = "synthesise the SynthSpeech corpus of the TinyLALM testbed (espeak-ng + sox)"
    synth.add_arguments(sub.add_parser("synth", help=what, description=what[0].upper() + what[1:] + "."))
    from data_modules import prepare

    prepare.add_arguments(sub.add_parser("prepare", help="manifests for a corpus in its published layout"))
    from ..data import shar

    shar.add_arguments(sub.add_parser("shar", help="checked cuts and their audio as Lhotse Shar tar shards"))


def run(args: argparse.Namespace) -> int:
    if args.data_cmd == "synth":
        from data_modules import synth

        return synth.run(args)
    if args.data_cmd == "shar":
        from ..data import shar

        return shar.run(args)
    from data_modules import prepare

    return prepare.run(args)
