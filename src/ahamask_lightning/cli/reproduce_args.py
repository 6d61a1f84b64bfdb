"""The command line of ``python -m ahamask_lightning.reproduce``: its arguments, and the defaults
that depend on other arguments (``ablations --quick``, the lambda grid of a model family)."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

TINY_TASKS = ("gr", "src", "asv", "asr", "aac", "gr_asr", "json")
PAPER_TASKS = ("asr", "gr", "ser", "asv", "aac", "s2tt", "osr", "gr_asr", "asr_gr", "json")
# `reproduce ablations --quick`, as the flags it stands for.
QUICK_ABLATIONS = ("--steps", "120", "--test-batches", "2", "--set", "model.init_args.lr", "0.1",
                   "--set", "model.init_args.warmup_steps", "10")
ABLATION_STUDIES = ("lambda", "seeds", "progressive", "prompts", "ood")
QWEN_ENV = {"instruct": "AHAMASK_QWEN2AUDIO_INSTRUCT", "base": "AHAMASK_QWEN2AUDIO_BASE"}


def _csv(kind: Callable[[str], object]) -> Callable[[str], list]:
    return lambda text: [kind(v) for v in text.split(",") if v.strip()]


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = _csv(str)(text)
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; expected some of {','.join(allowed)}")
        return values
    return parse


def parser(description: str | None = None) -> argparse.ArgumentParser:
    """The arguments of ``python -m ahamask_lightning.reproduce`` (``description``: its help text)."""
    p = argparse.ArgumentParser(prog="python -m ahamask_lightning.reproduce", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, tasks: Sequence[str], steps: int | None, test_batches: int | None) -> argparse.ArgumentParser:
        s = sub.add_parser(name)
        s.add_argument("--out", type=Path, required=True)
        if tasks:
            s.add_argument("--tasks", type=_csv(str), default=list(tasks))
        s.add_argument("--steps", type=int, default=steps, help="mask training steps (default: the YAML's)")
        s.add_argument("--test-batches", type=int, default=test_batches,
                       help=f"test batches per loader (default: {test_batches or 'all'})")
        s.add_argument("--set", nargs=2, action="append", metavar=("KEY", "VALUE"),
                       help="any CLI override for every run, e.g. --set data.init_args.batch_size 4")
        return s

    s = add("tiny", TINY_TASKS, None, 6)  # the YAMLs' 1000 steps; 6 x 16 = 96 test samples per task
    s.add_argument("--data", type=Path, default=Path("data/synth"))
    s.add_argument("--checkpoint", default="checkpoints/tiny_lalm_8x16g")
    s.add_argument("--schedule", choices=("tiny", "tiny_long"), default="tiny",
                   help="mask YAMLs: <task>_tiny.yaml (lr 0.1, tau over 600 steps) or <task>_tiny_long.yaml "
                        "(the mechanism probe's: lr 1e-2 after 500 warm-up steps, tau over 3000)")
    s.set_defaults(tasks=None)  # every task of TINY_TASKS with a YAML for --schedule
    s = add("table1", PAPER_TASKS, None, None)
    given = s.add_mutually_exclusive_group()
    given.add_argument("--released", action="store_true",
                       help="test the ten masks released with the paper (shipped with the package) instead of training")
    given.add_argument("--official", help="directory of the released checkpoints (<task>_<corpus>.pth): test those")
    given.add_argument("--masks", help="directory of <task>.safetensors to test instead of training")
    s = add("qwen2audio", (), None, None)
    s.add_argument("--jobs", type=_csv(str), default=["instruct:gr", "base:asv"], help="variant:task,...")
    s.add_argument("--instruct", help=f"Qwen2-Audio-7B-Instruct directory (${QWEN_ENV['instruct']})")
    s.add_argument("--base", help=f"Qwen2-Audio-7B directory (${QWEN_ENV['base']})")
    s.add_argument("--masks", help="directory of <task>_<variant>.safetensors to test instead of training")
    s.add_argument("--no-transfer", dest="transfer", action="store_false")
    s = add("ablations", (), None, None)  # steps: the YAML's; test batches: 4 (--quick: 2)
    s.add_argument("--quick", action="store_true",
                   help=f"a few-minute CPU check of every study: {' '.join(QUICK_ABLATIONS)} (explicit flags win)")
    s.add_argument("--family", default="tiny", help="tiny | salmonn | qwen2audio_instruct | qwen2audio_base")
    s.add_argument("--task", default="gr")
    s.add_argument("--only", type=_choices(ABLATION_STUDIES), default=list(ABLATION_STUDIES),
                   help=f"studies to run after the four conditions (default: {','.join(ABLATION_STUDIES)}; "
                        "ood: GR on the paper models only)")
    s.add_argument("--lambdas", type=_csv(float), help="default: 0,1e-3,1e-2,5e-2 (tiny), 0,1e-5,1e-4,1e-3 (paper)")
    s.add_argument("--seeds", type=_csv(int), default=[0, 1, 2])
    s.add_argument("--fractions", type=_csv(float), default=[round(0.1 * i, 1) for i in range(11)],
                   help="shares of heads switched on, by learned logit (default: 0,0.1,...,1)")
    s.add_argument("--variants", type=int, help="instruction wordings to test (default: all)")
    s.add_argument("--data", type=Path, default=Path("data/synth"))
    s.add_argument("--checkpoint", default="checkpoints/tiny_lalm_8x16g")
    s.add_argument("--pretrained", help="Qwen2-Audio directory for the qwen2audio families")
    s = sub.add_parser("figures")
    s.add_argument("--runs", type=Path, nargs="+", default=[Path("runs")])
    s.add_argument("--out", type=Path, required=True)
    return p


def quick_settings(args: argparse.Namespace) -> dict:
    """``ablations --quick``: fewer steps and test batches, and the learning-rate warm-up compressed
    with them -- under the paper's schedule (the SALMONN and Qwen2-Audio YAMLs: 1e-2 after 3000
    warm-up steps) no logit can fall from its initial 4.0 below 0 in ~100 steps, so every mask would
    keep every head and no study would show anything (the TinyLALM YAMLs already train at 0.1 after
    10 warm-up steps, which these flags repeat). Flags given explicitly (``--steps``,
    ``--test-batches``, ``--set``) win."""
    given = {key for key, _ in args.set or []}
    sets = [(QUICK_ABLATIONS[i + 1].removeprefix("--"), QUICK_ABLATIONS[i + 2]) for i in (4, 7)]
    return {"steps": args.steps or int(QUICK_ABLATIONS[1]),
            "test_batches": args.test_batches or int(QUICK_ABLATIONS[3]),
            "set": [(k, v) for k, v in sets if k not in given] + list(args.set or [])}


def with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of the parsed ``args`` with the defaults that depend on other arguments filled in."""
    values = dict(vars(args))
    if args.cmd == "ablations":
        if args.quick:
            values.update(quick_settings(args))
        values["test_batches"] = values["test_batches"] or 4
        if args.lambdas is None:
            values["lambdas"] = [0.0, 1e-3, 1e-2, 5e-2] if args.family == "tiny" else [0.0, 1e-5, 1e-4, 1e-3]
    return argparse.Namespace(**values)
