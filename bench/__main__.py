"""``python -m bench``: the training- and serving-cost benchmarks; JSON out, BENCHMARKS.md tables from it.

    python -m bench --smoke                         # tiny sizes, seconds (CI)
    python -m bench                                 # the CPU configuration (BENCHMARKS.md)
    python -m bench --full-size qwen2-audio-7b      # random bf16 weights on a GPU
    python -m bench --full-size salmonn-13b
    python -m bench --smoke --full-size salmonn-13b # that code path on the tiny SALMONN (CPU)
    python -m bench.report                          # BENCHMARKS.md tables from bench/results/*.json

Parts: ``training`` (target-only vs full logits vs LoRA, forward, MFU), ``cache`` (feature cache),
``scaling`` (batch/clip length, activation checkpointing), ``largest`` (largest batch, CUDA),
``decoding`` (static cache, last-position prefill), ``compile`` (the static-cache step compiled,
dense and pruned: ``bench/compiled.py``), ``serving`` (pruned decoding, mixed-task
batches: ``bench/bench_serving.py``). ``--full-size salmonn-13b`` has its own parts: ``salmonn`` and
``salmonn_checkpointed``. Each part's result is written as soon as it is done, and the long ones
(``scaling``, ``largest``, ``decoding``, ``serving``) also after each row, marked ``"partial": true``,
so a run cut short keeps what it measured. ``--smoke`` wins over ``--full-size``: that model's code
path at the smoke size.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

PARTS = ("training", "cache", "scaling", "largest", "decoding", "compile", "serving")
SALMONN_PARTS = ("salmonn", "salmonn_checkpointed")
HERE = Path(__file__).resolve().parent


def machine(device: str) -> dict:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": device,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def serving_part(smoke: bool, full_size: str | None, device: str, reps: int | None = None, progress=None) -> dict:
    """Pruned decoding and mixed-task batches (``bench/bench_serving.py``)."""
    from bench import bench_serving

    return bench_serving.run(smoke=smoke, full_size=full_size, device=device, reps=reps, on_progress=progress)


def run_part(part: str, size: dict, args, device: str, progress=None) -> dict:
    """One part's result; ``progress(result_so_far)`` is called by the long parts after each row."""
    from . import decoding, training

    reps = args.reps if args.reps is not None else size["reps"]
    if part == "training":
        return training.step_comparison(size, device, reps)
    if part == "cache":
        out = {"qwen2_audio": training.feature_cache_speedup(size, device, reps)}
        if not args.full_size:
            ckpt = None if args.smoke else str(HERE.parent / "checkpoints" / "tiny_lalm_8x16g")
            out["tiny_lalm"] = training.tiny_lalm_cache_speedup(ckpt, 4 if args.smoke else 16, reps)
        return out
    if part == "scaling":
        out = training.scaling(size, device, max(2, reps // 2) if not args.smoke else 1, progress)
        if not args.full_size:  # SALMONN's checkpointing at the same LLM size (the 13B's needs a second copy)
            from .salmonn import checkpointing_trade

            shape = dict(batches=(2,), layers=2, heads=4, hidden=64) if args.smoke else dict(
                batches=(4, 8), layers=size["layers"], heads=size["heads"], hidden=size["hidden"])
            out["salmonn"] = checkpointing_trade(device, 1 if args.smoke else max(2, reps // 2), **shape)
        return out
    if part == "largest":
        if not device.startswith("cuda"):
            return {"skipped": "needs a GPU"}
        return training.largest_batch(size, device, progress=progress)
    if part == "decoding":
        # full size: the static cache eager (a compile per batch shape would take the slot's minutes)
        return decoding.decoding(size, device, max(2, reps // 2) if not args.smoke else 1,
                                 batch_sizes=(1, 2) if args.smoke else (1, 4), compile_static=not args.full_size,
                                 progress=progress)
    if part == "compile":
        if args.smoke:  # inductor builds C++ for minutes on a CPU: not a smoke test's job
            return {"skipped": "compiles for minutes; run without --smoke"}
        from .compiled import compiled_decoding

        # full size: batch 1 only (each batch shape compiles anew; batch 1 is where the weights bound decoding)
        return compiled_decoding(size, device, max(2, reps // 2), batch_sizes=(1,) if args.full_size else (1, 8))
    if part == "serving":
        return serving_part(args.smoke, args.full_size, device, args.reps, progress)
    raise ValueError(part)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _check_device(p: argparse.ArgumentParser, device: str) -> None:
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        p.error(f"--device {device}: {err}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            p.error(f"--device {device}: no CUDA device here (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            p.error(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type not in ("cpu", "meta") and not getattr(torch, dev.type, None):
        p.error(f"--device {device}: unsupported device type {dev.type!r}")


def _check_out(p: argparse.ArgumentParser, out_path: Path) -> None:
    """Before any part runs: the JSON path must be a file we can write (its folder is made if missing)."""
    if out_path.is_dir():
        p.error(f"--out {out_path}: is a directory (give a .json file path)")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        p.error(f"--out {out_path}: cannot make its folder: {err.strerror or err}")
    if not os.access(out_path.parent, os.W_OK | os.X_OK) or (out_path.exists() and not os.access(out_path, os.W_OK)):
        p.error(f"--out {out_path}: not writable")


def main(argv: list[str] | None = None) -> int:
    from .models import SIZES

    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, for CI")
    p.add_argument("--full-size", choices=["qwen2-audio-7b", "salmonn-13b"], help="a published size, on a GPU")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--parts", default=None, help=f"comma-separated, of {', '.join(PARTS)} (default: all); with "
                   f"--full-size salmonn-13b of {', '.join(SALMONN_PARTS)}")
    p.add_argument("--reps", type=_positive, default=None, help="timed rounds per variant, >= 1 (default: per size)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<name>.json)")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch threads (1 on a CPU shared with other jobs: no thread waits on a busy core)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    _check_device(p, device)
    name = "smoke" if args.smoke else (args.full_size or "cpu")
    if args.smoke and args.full_size:  # that model's code path at its tiny size (CPU smoke of bench/gpu.sh)
        name = f"smoke-{args.full_size}"
    known = SALMONN_PARTS if args.full_size == "salmonn-13b" else PARTS
    if args.parts is None:
        parts = list(known)
    else:
        parts = list(dict.fromkeys(x.strip() for x in args.parts.split(",") if x.strip()))
        if not parts:
            p.error(f"--parts {args.parts!r}: names no part; expected some of {', '.join(known)}")
    bad = [x for x in parts if x not in known]
    if bad:
        whose = " with --full-size salmonn-13b" if args.full_size == "salmonn-13b" else ""
        p.error(f"--parts: unknown {', '.join(bad)}{whose}; expected some of {', '.join(known)}")
    if args.full_size and not args.smoke and not device.startswith("cuda"):
        p.error(f"--full-size {args.full_size}: needs a GPU (found device {device!r})")
    out_path = Path(args.out) if args.out else HERE / "results" / f"{name}.json"
    _check_out(p, out_path)
    result = {"name": name, "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(device), "parts": {}}

    def save() -> None:
        out_path.write_text(json.dumps(result, indent=1, default=str))

    if args.full_size == "salmonn-13b":
        from .salmonn import salmonn_full_size

        variant, batches = ("tiny", (1,)) if args.smoke else ("13b", (1, 4, 8))
        reps = args.reps if args.reps is not None else 5
        # checkpointed: the largest batch only, on a second model built after the first is freed
        salmonn_parts = {"salmonn": lambda: salmonn_full_size(device, reps, variant, batches),
                         "salmonn_checkpointed": lambda: salmonn_full_size(device, reps, variant, batches[-1:], True)}
        parts_run = {part: (lambda part=part, progress=None: salmonn_parts[part]()) for part in parts}
    else:
        size = SIZES["smoke" if args.smoke else name]
        result["size"] = size
        parts_run = {part: (lambda part=part, progress=None: run_part(part, size, args, device, progress))
                     for part in parts}
    failed = 0
    for part, fn in parts_run.items():
        t0 = time.perf_counter()

        def progress(so_far: dict, part: str = part, t0: float = t0) -> None:  # a long part's rows so far
            result["parts"][part] = {**so_far, "partial": True, "wall_s": time.perf_counter() - t0}
            save()

        try:
            result["parts"][part] = fn(progress=progress)
        except Exception as err:  # one part failing (e.g. out of memory) must not lose the others
            failed += 1  # nor the rows it had measured (kept, still marked partial)
            result["parts"][part] = {**result["parts"].get(part, {}), "error": f"{type(err).__name__}: {err}",
                                     "trace": traceback.format_exc()[-2000:]}
        result["parts"][part]["wall_s"] = time.perf_counter() - t0
        save()
        print(f"bench {name}: {part} done in {result['parts'][part]['wall_s']:.1f} s", flush=True)
    print(f"bench {name}: wrote {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
