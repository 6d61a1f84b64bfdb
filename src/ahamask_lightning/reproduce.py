"""Reproduce the paper's tables and figures through the same ``ahamask`` commands a user types.

    python -m ahamask_lightning.reproduce tiny       --out DIR   # TinyLALM: 4 conditions x tasks (CPU)
    python -m ahamask_lightning.reproduce table1     --out DIR   # SALMONN-13B, paper Table 1
    python -m ahamask_lightning.reproduce table1 --released --out DIR   # the same, testing the released masks
    python -m ahamask_lightning.reproduce qwen2audio --out DIR   # Qwen2-Audio GR (Instruct), ASV (Base), transfer
    python -m ahamask_lightning.reproduce ablations  --out DIR   # lambda, seeds, progressive, wording, OOD
    python -m ahamask_lightning.reproduce figures    --runs DIR --out DIR

Real-model commands first check every weight path and manifest they will need and stop at once,
listing exactly what is missing. ``--steps``/``--test-batches`` shorten any run (quick CPU checks).
How each study maps to YAML overrides: ``ahamask_lightning.analysis.ablations``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .analysis import ablations as ab
from .cli.reproduce_args import QWEN_ENV, TINY_TASKS, parser, with_defaults
from .paper_tables import PAPER_QWEN, PAPER_SALMONN, RELEASED_MASKS

TABLE_METRICS = {"asr": ("wer",), "gr": ("acc", "acc_exact", "answered"), "ser": ("acc", "acc_exact", "answered"),
                 "src": ("acc", "acc_exact", "answered"), "asv": ("acc", "acc_exact", "answered"),
                 "aac": ("meteor", "rouge_l"), "s2tt": ("bleu",), "osr": ("wer",), "gr_asr": ("ifr", "acc", "wer"),
                 "asr_gr": ("ifr", "acc", "wer"), "json": ("ifr", "wer", "acc")}


def config_candidates(task: str, family: str) -> tuple[Path, Path]:
    return Path("experiments") / f"{task}_{family}.yaml", Path("experiments") / family / f"{task}_{family}.yaml"


def config_path(task: str, family: str) -> str:
    for candidate in config_candidates(task, family):
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"no experiment YAML for task {task!r} and model {family!r} (experiments/{task}_{family}.yaml)")


# SynthSpeech's test folders as named test sets (in-domain, held-out voices); studies report "ind"
TINY_SETS, TINY_REPORTED_SET = {"ind": "test", "ood": "test_ood"}, "ind"


def tiny_data_args(data: Path, task: str) -> list[str]:
    """Train / val / test overrides for one task of a SynthSpeech corpus; the test sets are named
    (:data:`TINY_SETS`; held-out voices only where the corpus has them for the task)."""
    m = data / "manifests"
    tests = {name: [str(m / folder / f"{task}.jsonl")] for name, folder in TINY_SETS.items()
             if name == TINY_REPORTED_SET or (m / folder / f"{task}.jsonl").is_file()}
    return ["--data.init_args.train", f"[{m}/train/{task}.jsonl]", "--data.init_args.val", f"[{m}/val/{task}.jsonl]",
            "--data.init_args.test", json.dumps(tests)]


def quick_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Overrides for every fit and every test: --steps, --test-batches and each --set KEY VALUE."""
    common = [a for key, value in (args.set or []) for a in (f"--{key}", value)]
    fit = (["--trainer.max_steps", str(args.steps)] if args.steps else []) + common
    test = (["--trainer.limit_test_batches", str(args.test_batches)] if args.test_batches else []) + common
    return fit, test


def experiment_config(config: str) -> dict:
    """The experiment as ``ahamask fit --config CONFIG`` reads it: the ``config:`` bases it includes
    read first, its own keys applied on top. Parsed by the CLI's own parser; nothing is built."""
    import warnings

    import lightning as L

    from .cli.lightning import AHAMaskCLI

    class ParseOnly(AHAMaskCLI):
        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

    with warnings.catch_warnings():  # LightningCLI warns when args= meets a non-empty sys.argv
        warnings.simplefilter("ignore")
        cli = ParseOnly(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        auto_configure_optimizers=False, run=False, seed_everything_default=False,
                        args=["--config", str(config), "--seed_everything", "false"])
    return cli.config.as_dict()


def manifests_of(config: str, stages: Sequence[str]) -> list[str]:
    init = (experiment_config(config).get("data") or {}).get("init_args") or {}
    out = []
    for stage in stages:
        value = init.get(stage) or []
        for manifests in (value.values() if isinstance(value, dict) else [value]):  # {set name: manifest(s)}
            out += [manifests] if isinstance(manifests, str) else list(manifests)
    return out


def stop_if_missing(what: str, missing: list[str]) -> bool:
    if missing:
        print(f"reproduce {what}: cannot start, missing:", file=sys.stderr)
        for m in dict.fromkeys(missing):
            print(f"  {m}", file=sys.stderr)
    return bool(missing)


def salmonn_missing(config: str) -> list[str]:
    """Every SALMONN weight path of the YAML (null: its AHAMASK_SALMONN_* variable) that is absent."""
    from .models.salmonn import missing_paths

    weights = experiment_config(config)["model"]["init_args"]["model"]["init_args"]
    return missing_paths(**{k: weights.get(k) for k in ("whisper_path", "beats_path", "llm_path", "ckpt_path")})


def write_table(out: Path, summaries: list[dict], paper: dict | None = None) -> str:
    return ab.write_conditions_table(out, summaries, TABLE_METRICS, paper)


def jaccard_png(summaries: list[dict], path: Path) -> Path | None:
    from .analysis.figures import jaccard_heatmap
    from .analysis.masks import jaccard_matrix
    from .masking import load_mask

    masks = {s["task"]: load_mask(s["mask"]).mask for s in summaries}
    if not masks or len({m.shape for m in masks.values()}) != 1:
        return None
    jaccard_heatmap(jaccard_matrix(list(masks.values())), list(masks), str(path))
    return path


def run_table(jobs: list[tuple[str, str, ab.Runner, Path | None]], out: Path, paper: dict | None) -> list[dict]:
    """(label, task, runner, mask or None) -> four conditions each; the table beside the paper's numbers."""
    summaries = []
    for label, task, runner, mask in jobs:
        print(f"[reproduce] {label}: {'testing ' + str(mask) if mask else 'training a mask'}", flush=True)
        summaries.append({**ab.four_conditions(runner, task, out / label, mask=mask), "label": label})
    print(write_table(out, summaries, paper))
    return summaries


def cmd_tiny(args: argparse.Namespace) -> int:
    # without --tasks, every task with a YAML for the schedule (the probe schedule has some only)
    tasks = args.tasks if args.tasks is not None else [
        t for t in TINY_TASKS if any(c.is_file() for c in config_candidates(t, args.schedule))]
    ckpt = Path(args.checkpoint)
    missing = [] if (ckpt / "model.safetensors").is_file() else [f"{ckpt}/model.safetensors (make testbed RECIPE=6x8)"]
    missing += [str(p) for t in tasks for p in (args.data / "manifests" / s / f"{t}.jsonl"
                                                for s in ("train", "val", "test")) if not p.is_file()]
    if stop_if_missing("tiny", missing):
        return 2
    fit, test = quick_args(args)
    jobs = []
    for task in tasks:
        common = tiny_data_args(args.data, task) + ["--model.init_args.model.init_args.checkpoint", str(ckpt)]
        runner = ab.Runner(config_path(task, args.schedule), common, fit, test, eval_set=TINY_REPORTED_SET)
        jobs.append((task, task, runner, None))
    summaries = run_table(jobs, args.out, None)
    png = jaccard_png(summaries, args.out / "jaccard.png")
    print(f"[reproduce] wrote {args.out / 'table.md'}, {args.out / 'table.csv'}" + (f", {png}" if png else ""))
    return 0


def masks_to_test(args: argparse.Namespace, tasks: Sequence[str],
                  convert: bool = True) -> tuple[dict[str, Path], list[str]]:
    """The given mask of each task (``--released``, ``--official DIR``, ``--masks DIR``), and the files
    that should be there and are not. No masks given: ({}, []), every task trains its own.
    ``convert`` False only lists what is missing (``--official``'s checkpoints are not imported)."""
    if getattr(args, "released", False):  # the package's copies of the released checkpoints
        from .released_masks import released_mask

        return {t: released_mask(RELEASED_MASKS[t]) for t in tasks}, []
    if getattr(args, "official", None):
        if not convert:
            sources = {t: Path(args.official) / f"{RELEASED_MASKS[t]}.pth" for t in tasks}
            return {}, [str(p) for p in sources.values() if not p.is_file()]
        masks = ab.import_official_masks(Path(args.official), args.out / "official_masks",
                                         {t: RELEASED_MASKS[t] for t in tasks})
        return masks, [f"{args.official}/{RELEASED_MASKS[t]}.pth" for t in tasks if t not in masks]
    if args.masks:
        masks = {t: Path(args.masks) / f"{t}.safetensors" for t in tasks}
        return ({t: p for t, p in masks.items() if p.is_file()},
                [str(p) for p in masks.values() if not p.is_file()])
    return {}, []


def cmd_table1(args: argparse.Namespace) -> int:
    configs = {t: config_path(t, "salmonn") for t in args.tasks}
    missing = list(dict.fromkeys(m for c in configs.values() for m in salmonn_missing(c)))  # each YAML's weights
    masks, missing_masks = masks_to_test(args, args.tasks, convert=not missing)  # listed even when weights miss
    stages = ("test",) if (args.masks or args.official or args.released) else ("train", "val", "test")
    missing += missing_masks + [m for c in configs.values() for m in manifests_of(c, stages) if not Path(m).is_file()]
    if stop_if_missing("table1", missing):
        return 2
    fit, test = quick_args(args)
    jobs = [(t, t, ab.Runner(configs[t], [], fit, test), masks.get(t)) for t in args.tasks]
    summaries = run_table(jobs, args.out, PAPER_SALMONN)
    jaccard_png(summaries, args.out / "jaccard.png")
    return 0


def qwen_weights(variant: str, given: str | None) -> str | None:
    """The Qwen2-Audio directory of ``variant``: the flag, else its own variable; the adapter's
    ``$AHAMASK_QWEN2AUDIO_PATH`` only for Instruct (the README sets it to the Instruct weights, and a
    Base run on them would give plausible numbers for the wrong model)."""
    fallback = os.environ.get("AHAMASK_QWEN2AUDIO_PATH") if variant == "instruct" else None
    return given or os.environ.get(QWEN_ENV[variant]) or fallback


def qwen_jobs(jobs: list[str]) -> list[tuple[str, str]]:
    """``variant:task`` pairs of ``--jobs``, checked."""
    pairs = [tuple(j.split(":")) for j in jobs]
    for job, pair in zip(jobs, pairs):
        if len(pair) != 2 or pair[0] not in QWEN_ENV:
            raise ValueError(f"--jobs {job!r}: expected variant:task with variant {' or '.join(QWEN_ENV)}")
    return pairs


def cmd_qwen2audio(args: argparse.Namespace) -> int:
    jobs = qwen_jobs(args.jobs)
    paths = {v: qwen_weights(v, getattr(args, v)) for v in QWEN_ENV}
    variants = {v for v, _ in jobs} | ({"instruct", "base"} if args.transfer else set())
    missing = [f"{v} weights: --{v} or ${QWEN_ENV[v]} ({paths[v] or 'not set'})" for v in sorted(variants)
               if not paths[v] or not Path(paths[v]).is_dir()]
    configs = {(v, t): config_path(t, f"qwen2audio_{v}") for v, t in jobs}
    stages = ("test",) if args.masks else ("train", "val", "test")
    missing += [m for c in configs.values() for m in manifests_of(c, stages) if not Path(m).is_file()]
    masks = {(v, t): Path(args.masks) / f"{t}_{v}.safetensors" for v, t in jobs} if args.masks else {}
    missing += [str(p) for p in masks.values() if not p.is_file()]
    if stop_if_missing("qwen2audio", missing):
        return 2
    fit, test = quick_args(args)

    def runner(v: str, t: str) -> ab.Runner:
        return ab.Runner(config_path(t, f"qwen2audio_{v}"), ["--model.init_args.model.init_args.pretrained",
                                                               paths[v]], fit, test)

    # the paper's numbers beside a job only where the paper measured that model variant on that task
    # (a task of several jobs has a column per job, named by the job: see ablations.table_rows)
    tasks = [t for _, t in jobs]
    paper = {col + (f" [{t}_{v}]" if tasks.count(t) > 1 else ""): values
             for v, t in jobs for col, values in PAPER_QWEN.get((v, t), {}).items()}
    summaries = run_table([(f"{t}_{v}", t, runner(v, t), masks.get((v, t))) for v, t in jobs], args.out, paper)
    if args.transfer:  # the paper: masks do not transfer between Instruct and Base
        for (v, t), s in zip(jobs, summaries):
            other = "base" if v == "instruct" else "instruct"
            rec = ab.transfer(runner(other, t), t, Path(s["mask"]), args.out / f"transfer_{t}_{v}_on_{other}",
                              f"{t}: {v} mask on {other}")
            print(f"[reproduce] transfer {rec['label']}: {rec['metric']}")
    return 0


def cmd_ablations(args: argparse.Namespace) -> int:
    task, family, out = args.task, args.family, args.out
    config = config_path(task, family)
    common, missing = [], []
    if family == "tiny":
        common = tiny_data_args(args.data, task) + ["--model.init_args.model.init_args.checkpoint", str(args.checkpoint)]
        if not (Path(args.checkpoint) / "model.safetensors").is_file():
            missing.append(f"{args.checkpoint}/model.safetensors (make testbed RECIPE=6x8)")
        manifests = [str(args.data / "manifests" / s / f"{task}.jsonl") for s in ("train", "val", "test")]
    else:
        manifests = manifests_of(config, ("train", "val", "test"))
    if family == "salmonn":
        missing += salmonn_missing(config)
    elif family != "tiny":
        variant = family.removeprefix("qwen2audio_")
        pretrained = qwen_weights(variant, args.pretrained)
        if pretrained and Path(pretrained).is_dir():
            common = ["--model.init_args.model.init_args.pretrained", pretrained]
        else:
            where = f"${QWEN_ENV[variant]}" + (" or $AHAMASK_QWEN2AUDIO_PATH" if variant == "instruct" else "")
            missing.append(f"Qwen2-Audio-7B {variant} weights: --pretrained or {where} ({pretrained or 'not set'})")
    missing += [m for m in manifests if not Path(m).is_file()]
    if stop_if_missing("ablations", missing):
        return 2
    fit, test = quick_args(args)
    runner = ab.Runner(config, common, fit, test, eval_set=TINY_REPORTED_SET if family == "tiny" else None)
    only = set(args.only)
    base = ab.four_conditions(runner, task, out / "conditions")
    mask = Path(base["mask"])
    aha = runner.metric(base["conditions"]["AHAMask"], task)
    instr = runner.metric(base["conditions"]["with instruction"], task)
    if "lambda" in only:
        ab.lambda_sweep(runner, task, args.lambdas, out / "lambda", done={0.0: mask})
    if "seeds" in only:
        ab.seed_study(runner, task, args.seeds, out / "seeds", done=ab.reusable_for_seeds(mask, args.seeds))
    if "progressive" in only:
        ab.progressive(runner, task, mask, args.fractions, out / "progressive",
                       {"AHAMask": aha, "with instruction": instr})
    if "prompts" in only:
        ab.prompt_sensitivity(runner, task, out / "prompts", ahamask=aha, variants=args.variants)
    if "ood" in only and family != "tiny" and task == "gr":  # TinyLALM's test loaders hold its held-out voices
        sets = {k: v for k, v in ab.OOD_GR.items() if Path(v).is_file()}
        if sets:
            ab.held_out(runner, task, mask, sets, out / "ood")
    from .analysis.figures import draw_all

    for png in draw_all([out], out / "figures"):
        print(f"[reproduce] wrote {png}")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from .analysis.figures import draw_all

    written = draw_all(args.runs, args.out)
    for png in written:
        print(f"[reproduce] wrote {png}")
    if not written:
        print(f"reproduce figures: no summary.json under {', '.join(map(str, args.runs))}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = with_defaults(parser(__doc__).parse_args(argv))
    commands = {"tiny": cmd_tiny, "table1": cmd_table1, "qwen2audio": cmd_qwen2audio, "ablations": cmd_ablations,
                "figures": cmd_figures}
    try:
        return commands[args.cmd](args)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        message = str(exc).strip()
        print(f"reproduce {args.cmd}: {message.splitlines()[0] if message else repr(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
