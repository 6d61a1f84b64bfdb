"""``ahamask data synth ...`` (SynthSpeech) and ``ahamask data prepare CORPUS --root DIR --out DIR``."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_cmd", required=True)
    from data_modules import synth

    synth.add_arguments(sub.add_parser("synth", help="synthesise the SynthSpeech corpus (espeak-ng + sox)"))
    from data_modules import prepare

    prepare.add_arguments(sub.add_parser("prepare", help="manifests for a corpus in its published layout"))


def run(args: argparse.Namespace) -> int:
    if args.data_cmd == "synth":
        from data_modules import synth

        return synth.run(args)
    from data_modules import prepare

    return prepare.run(args)
