"""The README's main job on a laptop CPU (``make demo``).

Synthesises SynthSpeech (if absent), trains a gender-recognition AHAMask on a committed
TinyLALM (by default the 8 x 16-head grown testbed, where the mask reaches the instruction row)
without any instruction, tests it against the with-instruction, no-instruction and
random-mask conditions, and prints the comparison, then where the mask and the logs are.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .analysis.ablations import metric_value
from .experiment import conditions, fit_mask, random_like, test_condition
from .serving import TINY_DEFAULT

# The files the repository ships, relative to its root. They are looked up in the checkout this
# module runs from (the folder above src/), then in the working directory (an installed package).
CONFIG = "experiments/gr_tiny.yaml"
CHECKPOINT = TINY_DEFAULT  # the default testbed, as `ahamask infer --model tiny`
HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parents[1] if HERE.parent.name == "src" else None
FROM_ROOT = "run it from the repository root (the folder with experiments/ and checkpoints/)"


def shipped(relative: str) -> Path | None:
    """Where the shipped file or folder ``relative`` is: the checkout's, else the working directory's."""
    for root in ([CHECKOUT] if CHECKOUT else []) + [Path.cwd()]:
        if (root / relative).exists():
            return root / relative
    return None


def missing_checkpoint(path: Path | None) -> str:
    """Why the demo has no checkpoint, and what to do: regrow a testbed folder of this checkout, or
    look in the right place (the default is the checkout's, which an installed package lacks)."""
    if path is not None and CHECKOUT and path.resolve().parent == CHECKOUT / "checkpoints":
        if path.name == Path(CHECKPOINT).name:
            return "TinyLALM checkpoint missing (make testbed RECIPE=8x16g regrows it)"
        return "TinyLALM checkpoint missing (docs/testbed.md: which make testbed RECIPE=... grows it)"
    return f"no TinyLALM checkpoint (model.safetensors) there: {FROM_ROOT}, or pass --checkpoint DIR"


def data_overrides(data: Path, task: str = "gr") -> list[str]:
    """The corpus' manifests; the two test sets named ``ind`` (in-domain voices) and ``ood`` (held-out voices)."""
    m = data / "manifests"
    tests = {"ind": [f"{m}/test/{task}.jsonl"], "ood": [f"{m}/test_ood/{task}.jsonl"]}
    return ["--data.init_args.train", f"[{m}/train/{task}.jsonl]", "--data.init_args.val", f"[{m}/val/{task}.jsonl]",
            "--data.init_args.test", json.dumps(tests)]


def results_table(rows: list[tuple[str, float | None, float | None, float | None, int | None]]) -> str:
    """The comparison as printed: one line per condition, accuracies in %, heads on ('all': no mask)."""
    lines = ["Gender recognition on TinyLALM (accuracy %, in-domain test / held-out voices;",
             "'bare' counts only answers that are the label alone, not e.g. 'Male|<transcript>'):",
             f"{'condition':<18} {'GR':>7} {'bare':>7} {'GR-OOD':>7} {'heads on':>9}"]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for name, acc, exact, ood, heads in rows:
        lines.append(f"{name:<18} {f(acc):>7} {f(exact):>7} {f(ood):>7} {('all' if heads is None else heads):>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ahamask_lightning.demo", description=__doc__)
    # not data/synth: make tiny-data would take this small corpus for the full one and skip it
    p.add_argument("--data", default="data/synth_demo",
                   help="corpus folder, synthesised there when it holds none (default: %(default)s, in the "
                        "working directory)")
    p.add_argument("--checkpoint", default=None,
                   help=f"a TinyLALM checkpoint folder (default: the repository's {CHECKPOINT}); "
                        "checkpoints/tiny_lalm for the 6 x 8-head model, where it falls short")
    p.add_argument("--out", default="runs/demo", help="where the mask, logs and results go (default: %(default)s)")
    p.add_argument("--n", type=int, default=1500, help="utterances to synthesise if --data is empty")
    p.add_argument("--steps", type=int, default=600, help="mask training steps")
    p.add_argument("--test-batches", type=int, default=10, help="test batches of 16 per split")
    args = p.parse_args(argv)
    config = shipped(CONFIG)
    if config is None:
        print(f"[demo] {CONFIG} not found: {FROM_ROOT}", file=sys.stderr)
        return 2
    checkpoint = Path(args.checkpoint) if args.checkpoint else shipped(CHECKPOINT)
    if checkpoint is None or not (checkpoint / "model.safetensors").is_file():
        print(f"[demo] {checkpoint or CHECKPOINT}: {missing_checkpoint(checkpoint)}", file=sys.stderr)
        return 2
    start = time.time()
    data, out = Path(args.data), Path(args.out)
    print(f"[demo] corpus {data.resolve()}, results {out.resolve()}", flush=True)
    if not (data / "summary.json").is_file():
        from data_modules.synth import synthesize

        print(f"[demo] synthesising {args.n} utterances into {data} ...", flush=True)
        synthesize(data, n=args.n, seed=0)
    common = data_overrides(data) + ["--model.init_args.model.init_args.checkpoint", str(checkpoint)]
    print(f"[demo] training a GR mask for {args.steps} steps without instruction ...", flush=True)
    mask = fit_mask(str(config), out / "gr", common + ["--trainer.max_steps", str(args.steps),
                                                    "--trainer.limit_val_batches", "2"])
    rand = random_like(mask, out / "gr" / "random_mask.safetensors", seed=0)
    rows = []
    for cond in conditions(mask, rand):
        print(f"[demo] testing: {cond.name}", flush=True)
        where = out / "test" / cond.name.replace(" ", "_")  # its config.yaml too, not the YAML's runs/tiny/gr
        res = test_condition(str(config), cond, where, common + ["--trainer.limit_test_batches", str(args.test_batches),
                                                                 "--trainer.default_root_dir", str(where)])
        m = res["metrics"]
        rows.append((cond.name, metric_value(m, "gr", "acc", "ind"), metric_value(m, "gr", "acc_exact", "ind"),
                     metric_value(m, "gr", "acc", "ood"), res["run"].get("active_heads")))
    table = results_table(rows)
    (out / "results.txt").write_text(table + "\n")
    print("\n" + table)
    # where everything is, last, so it stays on screen
    print(f"\n[demo] done in {time.time() - start:.0f} s")
    print(f"  mask:   {mask}   (ahamask mask info {mask})")
    print(f"  logs:   {mask.parent}   (TensorBoard: tensorboard --logdir {mask.parent})")
    print(f"  tests:  {out / 'test'}/<condition>/   (metrics and predictions of each row)")
    print(f"  table:  {out / 'results.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
