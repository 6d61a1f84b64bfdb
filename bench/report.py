"""``python -m bench.report``: BENCHMARKS.md tables from the JSON that ``python -m bench`` writes.

Reads ``bench/results/*.json`` (or the files given), renders one section per file (command,
machine, versions, date, then a table per part) and replaces the text between the
``<!-- bench:begin -->`` and ``<!-- bench:end -->`` markers of BENCHMARKS.md (appended when absent).
Thresholds of the performance targets are compared here, from the measured figures.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
ROOT = Path(__file__).resolve().parent.parent
ORDER = ["cpu", "smoke", "qwen2-audio-7b", "salmonn-13b"]


def _s(t: dict) -> str:
    """median (min-max) in seconds or milliseconds."""
    if t["median_s"] < 1:
        return f"{1e3 * t['median_s']:.1f} ms ({1e3 * t['min_s']:.1f}-{1e3 * t['max_s']:.1f})"
    return f"{t['median_s']:.2f} s ({t['min_s']:.2f}-{t['max_s']:.2f})"


def _r(r: dict) -> str:
    cpu = f"; CPU time {r['cpu_ratio']:.2f}" if "cpu_ratio" in r else ""
    return f"{r['ratio']:.2f} (paired {r['paired_median']:.2f}, {r['paired_min']:.2f}-{r['paired_max']:.2f}{cpu})"


def _mb(n) -> str:
    if not isinstance(n, (int, float)):  # "OOM": the variant ran out of GPU memory
        return str(n)
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


# results written before the CPU proxy left the weights out carry this kind: say what it counted
OLD_CPU_KIND = "saved tensors for backward (CPU proxy)"


def _kind(kind: str) -> str:
    if kind == OLD_CPU_KIND:
        return ("saved tensors for backward (CPU proxy), the frozen weights that Linear layers save included "
                "(measured before they were left out)")
    return kind


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _target(ok: bool) -> str:
    return "met" if ok else "**not met**"


def training(part: dict) -> list[str]:
    out = [f"Measured dense matmul peak: {part['matmul_peak_flops'] / 1e9:.1f} GFLOP/s.", ""]
    for vocab, v in part["vocabs"].items():
        b = v["batch"]
        out += [f"Vocabulary {vocab}: batch of {b['clips']} clips, {b['padded_tokens']} padded tokens, "
                f"{b['targets']} targets; loss target-only {v['loss_target_only']:.6f}, full logits "
                f"{v['loss_full_logits']:.6f}.", ""]
        rows = [[name, _s(t), f"{t['cpu_median_s']:.2f} s" if "cpu_median_s" in t else "",
                 _mb(v["memory"][name]["peak_bytes"])] for name, t in v["times"].items()]
        out += _table(["variant", "wall, median (min-max)", "CPU time, median", "memory"], rows) + [""]
        out += _table(["ratio", "value"], [[k, _r(r)] for k, r in v["ratios"].items()]) + [""]
        f = v["flops"]
        out.append(f"Model FLOPs of the mask step (4 P_llm T + 4 P_head T_targets + 2 P_enc T_enc): {f['flops'] / 1e9:.1f} GFLOP "
                   f"(P_llm {f['p_llm'] / 1e6:.1f} M, lm_head {f['p_head'] / 1e6:.1f} M at the targets, "
                   f"P_enc {f['p_enc'] / 1e6:.1f} M over {f['t_enc']} positions); "
                   f"{v['achieved_flops'] / 1e9:.1f} GFLOP/s = {v['mfu_vs_matmul']:.2f} of the measured matmul peak"
                   + (f", {v['mfu_vs_nominal']:.2f} of the nominal peak ({part['nominal_peak_flops'] / 1e12:.0f} "
                      f"TFLOP/s, {part.get('nominal_peak_of', '')}; DESIGN's MFU)" if "mfu_vs_nominal" in v else "")
                   + ".")
        kind = next(iter(v["memory"].values()))["kind"]
        out += [f"Memory: {_kind(kind)}.", ""]
    vocabs = list(part["vocabs"].values())
    names = list(part["vocabs"])

    def check(label: str, r: dict, limit: float) -> str:
        cpu = f", CPU time {r['cpu_ratio']:.2f} ({_target(r['cpu_ratio'] <= limit)})" if "cpu_ratio" in r else ""
        return f"{label}: wall {r['ratio']:.2f} ({_target(r['ratio'] <= limit)}){cpu}; target <= {limit}"

    checks = []
    if vocabs:
        checks.append(check(f"target-only / full logits at vocabulary {names[0]}",
                            vocabs[0]["ratios"]["target_vs_full"], 0.75))
        if "mask_vs_lora" in vocabs[0]["ratios"]:
            checks.append(check("mask step / LoRA r8 q,v step", vocabs[0]["ratios"]["mask_vs_lora"], 0.75))
    if len(vocabs) > 1:
        checks.append(check(f"target-only / full logits at vocabulary {names[1]}",
                            vocabs[1]["ratios"]["target_vs_full"], 0.5))
    return out + [f"- {c}" for c in checks] + [""]


def cache(part: dict) -> list[str]:
    rows = []
    for v in part.values():
        if not isinstance(v, dict) or "times" not in v:
            continue
        t = v["times"]
        sp, sh = v["speedup"], v["encoder_share"]
        saved = t["step_no_cache"]["median_s"] - t["step_cached"]["median_s"]
        verdict = f"wall {_target(1 - 1 / sp['ratio'] >= 0.9 * sh['ratio'])}"
        if "cpu_ratio" in sp:
            verdict += f", CPU time {_target(1 - 1 / sp['cpu_ratio'] >= 0.9 * sh['cpu_ratio'])}"
        rows.append([v["model"].replace(f"{ROOT}/", ""), _s(t["step_no_cache"]), _s(t["step_cached"]), _s(t["encoder_only"]),
                     f"{saved / t['encoder_only']['median_s']:.2f}",
                     f"{_s(t['cache_read_only'])} ({v.get('read_in', 'step')})" if "cache_read_only" in t else "",
                     _r(sp), _r(sh), verdict])
    return _table(["model", "step, no cache", "step, cache warm", "encoder alone", "time saved / encoder time",
                   "cache read alone (where it runs)", "speed-up", "encoder share of the step",
                   "time saved >= encoder share (within 10 %: timing noise)"], rows) + [""]


def scaling(part: dict) -> list[str]:
    out = _step_rows(part["rows"])
    if "salmonn" in part:  # checkpointing on the paper's model, at the same LLM size
        out += [f"**{part['salmonn']['model']}**, 30 s clips:", ""] + _step_rows(part["salmonn"]["rows"])
    return out


def _step_rows(records: list[dict]) -> list[str]:
    rows = []
    kind = ""
    for r in records:
        for name in r["memory"]:  # every variant, those that ran out of memory too ("OOM")
            t, m = r["times"].get(name), r["memory"][name]
            if isinstance(m, dict):
                kind = kind or m["kind"]
            rows.append([r["clips"], r["clip_s"], r["batch"]["padded_tokens"], name, _s(t) if t else "out of memory",
                         _mb(m["peak_bytes"] if isinstance(m, dict) else m),
                         "" if name == "plain" or r["checkpoint_grad_max_abs_diff"] is None
                         else f"{r['checkpoint_grad_max_abs_diff']:.1e}"])
    return _table(["clips", "clip s", "padded tokens", "LLM activations", "mask step", "memory",
                   "max |grad diff| vs plain"], rows) + ["", f"Memory: {_kind(kind)}.", ""]


def largest(part: dict) -> list[str]:
    if "rows" not in part:
        return [part.get("skipped", ""), ""]
    rows = []
    for r in part["rows"]:
        found = str(r["largest_batch"]) if r.get("done", True) else f">= {r['largest_batch']} (search cut short)"
        hi = r.get("first_too_large", "")
        too_large = (f"none up to {part.get('limit', '')}" if hi is None else hi) if "first_too_large" in r else ""
        rows.append([r["checkpointing"], found, too_large, r["clip_s"], f"{r['memory_gb']:.0f} GB"])
    return _table(["activation checkpointing", "largest batch", "smallest batch tried that did not fit", "clip s",
                   "GPU memory"], rows) + [""]


def decoding(part: dict) -> list[str]:
    rows = []
    for r in part["rows"]:
        tps = r["tokens_per_s"]
        sp = r["speedup"]
        rows.append([r["batch"], r["prompt_tokens"], f"{tps['default']:.1f}", f"{tps['adapter']:.1f}",
                     f"{tps['static_cache']:.1f}", _r(sp["static_vs_default"]), _s(r["times"]["prefill_default"]),
                     _s(r["times"]["prefill_adapter"])])
    static = {True: " (compiled by transformers)", False: " (eager)"}.get(part.get("static_cache_compiled"), "")
    return _table(["batch", "prompt tokens", "default tok/s", "adapter tok/s", f"static cache{static} tok/s",
                   "static / default speed-up", "prompt pass, default", "prompt pass, last-position logits"],
                  rows) + ["", f"{part['new_tokens']} new tokens per sample, greedy.", ""]


def compiled(part: dict) -> list[str]:
    """Per-step decoding times: default, static cache eager and compiled, dense and pruned."""
    rows = []
    for r in part["rows"]:
        ms, sp, same = r["ms_per_step"], r["speedup"], r["identical_tokens"]
        rows.append([r["batch"], *(f"{ms[k]:.1f}" for k in ("dense_default", "dense_static", "dense_compiled",
                                                            "pruned_static", "pruned_compiled")),
                     _r(sp["compiled_vs_static"]), _r(sp["pruned_vs_dense_static"]), _r(sp["pruned_vs_dense_compiled"]),
                     _r(sp["pruned_compiled_vs_dense_default"]),
                     f"{r['first_call_s']['dense_compiled']:.0f} s",
                     "yes" if all(same.values()) else "**no**: " + ", ".join(k for k, v in same.items() if not v)])
    return _table(["batch", "dense default ms/step", "dense static", "dense compiled", "pruned static",
                   "pruned compiled", "compiled / static speed-up", "pruned / dense, eager",
                   "pruned / dense, compiled", "pruned compiled / dense default", "first call (compiles)",
                   "same tokens"], rows) + [
        "", f"{part['model']}; {part['active_heads']} of {part['heads']} heads kept; compile: {part['compile']}; "
        f"{part['new_tokens']} new tokens, greedy, per-step time from the gaps between lm_head calls, median over "
        f"{part['reps']} interleaved runs; audio: {part['audio']}. Weight bound at this fraction: "
        f"{part['weight_bound']:.2f}. Same tokens: compiled = eager, static = default, pruned = gated.", ""]


def serving(part: dict) -> list[str]:
    """Pruned decoding (per-step times) and mixed-task batches, per model, with the two targets."""
    out: list[str] = []
    bound_7b = part.get("weight_bound_qwen2_audio_7b", {})
    for name, m in part["models"].items():
        desc = ", ".join(f"{k} {v}" for k, v in m.items() if not isinstance(v, (dict, list)))
        out += [f"**{name}** ({desc})", ""]
        rows = []
        for r in m["pruned_decoding"]:
            lo, hi = r.get("speedup_pruned_vs_dense_paired_range", [float("nan")] * 2)
            rows.append([r["batch"], f"{r['active_fraction']:.0%} ({r['active_heads']})",
                         f"{r['dense_ms_per_step']:.1f}", f"{r['gated_ms_per_step']:.1f}", f"{r['pruned_ms_per_step']:.1f}",
                         f"{r['speedup_pruned_vs_dense']:.2f} (paired {r['speedup_pruned_vs_dense_paired']:.2f}, "
                         f"{lo:.2f}-{hi:.2f})",
                         f"{r['speedup_pruned_vs_gated']:.2f}", f"{r.get('weight_bound_speedup', float('nan')):.2f}",
                         "yes" if r["identical_tokens_pruned_vs_gated"] else "**no**",
                         _target(r["speedup_pruned_vs_dense"] >= 1.3) if r["active_fraction"] == 0.2 else ""])
        out += _table(["batch", "active heads", "dense ms/step", "gated ms/step", "pruned ms/step",
                       "pruned / dense speed-up", "pruned / gated", "weight bound", "same tokens as gated",
                       "target >= 1.3x at 20 %"], rows) + [""]
        mt = m.get("mixed_task")
        if mt is None:
            continue
        out += _table(["masks", "samples", "one batch tok/s", "mask by mask tok/s", "pruned, mask by mask tok/s",
                       "one batch / mask by mask", "same tokens", "target >= 2x"],
                      [[mt["masks"], mt["samples"], f"{mt['one_batch_tokens_per_s']:.1f}",
                        f"{mt['by_mask_tokens_per_s']:.1f}", f"{mt['pruned_by_mask_tokens_per_s']:.1f}",
                        f"{mt['speedup_one_batch_vs_by_mask']:.2f} (paired {mt['speedup_one_batch_vs_by_mask_paired']:.2f})",
                        "yes" if mt["identical_tokens_one_batch_vs_by_mask"] else "**no**",
                        _target(mt["speedup_one_batch_vs_by_mask"] >= 2)]]) + [""]
    settings = part.get("settings", {})
    out += [f"Per-step decoding time: median of the gaps between lm_head calls in one greedy `generate` of "
            f"{settings.get('new_tokens')} tokens, median over {settings.get('reps')} interleaved runs per variant; "
            f"audio: {part.get('audio')}. Weight bound: dense / pruned multiply-adds per token in the LLM's "
            "linear layers and lm_head (what removing heads can save when the step is bound by its matmuls)."]
    if bound_7b:
        out += ["The same bound for the published Qwen2-Audio-7B: "
                + ", ".join(f"{float(k):.0%} active {v:.2f}x" for k, v in bound_7b.items()) + "."]
    return out + [""]


def generic(part, depth: int = 0) -> list[str]:
    """Any JSON: lists of flat records as tables, nested objects as labelled blocks."""
    out: list[str] = []
    if isinstance(part, dict):
        flat = {k: v for k, v in part.items() if not isinstance(v, (dict, list))}
        if flat:
            out += [", ".join(f"{k}: {_fmt(v)}" for k, v in flat.items()), ""]
        for k, v in part.items():
            if isinstance(v, (dict, list)) and k not in ("trace", "times"):
                out += [f"{'#' * min(6, 4 + depth)} {k}", ""] + generic(v, depth + 1)
    elif isinstance(part, list) and part and all(isinstance(x, dict) for x in part):
        keys = list(dict.fromkeys(k for x in part for k, v in x.items() if not isinstance(v, (dict, list))))
        out += _table(keys, [[_fmt(x.get(k, "")) for k in keys] for x in part]) + [""]
        for i, x in enumerate(part):
            for k, v in x.items():
                if isinstance(v, (dict, list)) and k != "times":
                    out += [f"{'#' * min(6, 4 + depth)} {k} ({i})", ""] + generic(v, depth + 1)
    elif isinstance(part, list):
        out += [", ".join(_fmt(x) for x in part), ""]
    return out


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


RENDER = {"training": training, "cache": cache, "scaling": scaling, "largest": largest, "decoding": decoding,
          "compile": compiled, "serving": serving}
TITLES = {"training": "Mask-training step: target-only logits, full logits, forward, LoRA",
          "cache": "Audio-feature cache: an epoch after the first", "scaling": "Scaling and activation checkpointing",
          "largest": "Largest batch", "decoding": "Decoding: transformers' defaults vs the adapter's fast path",
          "compile": "Decoding compiled (bench/compiled.py): static cache, dense and pruned",
          "serving": "Serving (bench/bench_serving.py)", "salmonn": "SALMONN mask training",
          "salmonn_checkpointed": "SALMONN mask training, LLM activations checkpointed"}


def section(result: dict) -> list[str]:
    m = result["machine"]
    out = [f"### `{result['command']}`", "",
           f"Machine: {m.get('gpu', m['cpu'])} ({m['cores']} CPU cores, {m['torch_threads']} torch threads"
           f"{', load average at start ' + ', '.join(f'{x:.1f}' for x in m['load_average']) if m.get('load_average') else ''}); "
           f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}; {m['date']}. "
           "Times: median (min-max) of interleaved rounds in one process; ratios: of the wall-time medians, "
           "with the median and range of the per-round (paired) ratios and, where recorded, the ratio of the "
           "process CPU-time medians (all threads: the work done, less sensitive to other jobs on the machine).", ""]
    for part, data in result["parts"].items():
        out += [f"#### {TITLES.get(part, part)}", ""]
        if "error" in data:
            out += [f"Failed: `{data['error'][:300]}`", ""]
            if not data.get("partial"):
                continue
            out += ["What it measured before it failed:", ""]
        if "skipped" in data:
            out += [f"Skipped: {data['skipped']}", ""]
            continue
        out += RENDER.get(part, generic)(data)
        cut = "; cut short: the rows measured before it stopped" if data.get("partial") and "error" not in data else ""
        out += [f"({data.get('wall_s', 0):.0f} s{cut})", ""]
    return out


def render(paths: list[Path]) -> str:
    results = []
    for path in paths:
        result = json.loads(path.read_text())
        if not {"name", "machine", "parts"} <= set(result):  # e.g. bench_data's JSON: its table is by hand
            print(f"bench.report: {path}: not a `python -m bench` result (no name/machine/parts); left out",
                  file=sys.stderr)
            continue
        results.append(result)
    results.sort(key=lambda r: ORDER.index(r["name"]) if r["name"] in ORDER else len(ORDER))
    lines = [BEGIN, "## Training and serving cost (python -m bench)", "",
             "Generated by `python -m bench.report` from `bench/results/*.json`; do not edit by hand.", ""]
    for r in results:
        lines += section(r)
    return "\n".join(lines + [END])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="*", help="JSON files (default bench/results/*.json)")
    p.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"), help="the file whose marked block is replaced")
    p.add_argument("--stdout", action="store_true", help="print the block instead of writing the file")
    args = p.parse_args(argv)
    paths = [Path(x) for x in args.results] or sorted((ROOT / "bench" / "results").glob("*.json"))
    if not paths:
        p.error("no results: run `python -m bench` first (bench/results/*.json)")
    for path in paths:
        if not path.is_file():
            p.error(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
        try:
            json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            p.error(f"{path}: not readable JSON ({err})")
    md = Path(args.markdown)
    if not args.stdout:
        if md.is_dir():
            p.error(f"--markdown {md}: is a directory")
        if not md.parent.is_dir():
            p.error(f"--markdown {md}: no folder {md.parent}")
    block = render(paths)
    if args.stdout:
        print(block)
        return 0
    text = md.read_text() if md.is_file() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    try:
        md.write_text(text)
    except OSError as err:
        p.error(f"--markdown {md}: cannot write: {err.strerror or err}")
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
