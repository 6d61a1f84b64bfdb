"""Figures as PNG: Jaccard heat map (paper Figure 3), per-layer active heads, metric versus active
heads (Figure 4), lambda trade-off (Figure 5), prompt-wording spread (Figure 2), the four conditions
per test set (in-domain and out-of-domain) and mask transfer between models."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Every metric is x 100 (tasks/metrics.py); the axis says which and which way is better.
METRIC_LABELS = {"acc": "accuracy (%)", "wer": "WER (%, lower is better)", "cer": "CER (%, lower is better)",
                 "ifr": "instruction following rate (%)", "bleu": "BLEU-4", "meteor": "METEOR (x100)",
                 "rouge_l": "ROUGE-L (x100)", "cider": "CIDEr (x100)"}
CONDITION_COLOURS = {"with instruction": "#1f77b4", "no instruction": "#ff7f0e", "random mask": "#7f7f7f",
                     "AHAMask": "#d62728"}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def metric_name(metric: str) -> str:
    """The metric's name without its unit (for titles)."""
    return metric_label(metric).split(" (")[0]


def grouped_bars(values: dict[str, dict[str, float | None]], path: str, ylabel: str, title: str,
                 xlabel: str = "") -> None:
    """Bars of ``values[group][series]``: groups on the x axis, one coloured bar per series."""
    plt = _plt()
    groups = list(values)
    series = list(dict.fromkeys(k for g in groups for k in values[g]))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.5 + 0.5 * len(groups) * len(series)), 3.9))
    for j, name in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ys = [values[g].get(name) for g in groups]
        bars = ax.bar([x for x, y in zip(xs, ys) if y is not None], [y for y in ys if y is not None], width,
                      label=name, color=CONDITION_COLOURS.get(name))
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    top = max([v for g in values.values() for v in g.values() if v is not None] or [1.0])
    ax.set_ylim(0, max(100.0, top) * 1.08)  # room for the value labels
    # the legend above the axes, under the title: never on a bar
    ax.legend(fontsize=8, ncol=min(4, len(series)), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.set_title(title, fontsize=10, pad=22 * ((len(series) + 3) // 4))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def jaccard_heatmap(matrix: torch.Tensor, names: list[str], path: str, title: str = "") -> None:
    plt = _plt()
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(4.8, 2.0 + 0.7 * n), max(3.8, 1.6 + 0.6 * n)))
    im = ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="viridis")
    short = [name.split(" (")[0] for name in names]  # details (e.g. head counts) on the y axis only
    rotate = n > 4 or max(map(len, short)) > 8
    ax.set_xticks(range(n), short, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(range(n), names)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                    color="white" if matrix[i, j] < 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label="Jaccard index")
    fig.suptitle(title or "Jaccard similarity of learned masks", fontsize=10)  # centred over axes + colour bar
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def layer_profile(masks: dict[str, torch.Tensor], path: str, title: str = "") -> None:
    """Per LLM layer, the share of its heads a mask keeps on (one line per mask)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    layers, heads = next(iter(masks.values())).shape
    styles = ("-", "--", "-.", ":")
    for i, (name, m) in enumerate(masks.items()):  # lines may coincide: each its own dash and marker size
        ax.plot(range(m.shape[0]), (100 * m.sum(1) / m.shape[1]).numpy(), marker="osD^v"[i % 5],
                markersize=max(3, 9 - 1.5 * i), linestyle=styles[i % 4], label=f"{name} ({int(m.sum())}/{m.numel()})")
    ax.set_xlabel("LLM layer (0 = first)")
    ax.set_ylabel(f"heads active (% of {heads})")
    ax.set_ylim(0, 105)
    ax.set_xticks(range(0, layers, max(1, layers // 10)))
    ax.legend(fontsize=8)
    ax.set_title(title or "Active heads per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def metric_vs_share(rows: list[dict], path: str, metric: str, references: dict[str, float] | None = None,
                    title: str = "", own_share: float | None = None) -> None:
    """Figure 4: the metric as more and more heads are switched on (``rows``: share, metric)."""
    plt = _plt()
    rows = sorted((r for r in rows if r.get("metric") is not None), key=lambda r: r["share"])
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot([100 * r["share"] for r in rows], [r["metric"] for r in rows], marker="o", label="top heads on, no instruction")
    colours = {"AHAMask": "#d62728", "with instruction": "#1f77b4", "no instruction": "#ff7f0e"}
    for (name, value), style in zip((references or {}).items(), ("--", ":", "-.")):
        if value is not None:
            ax.axhline(value, linestyle=style, color=colours.get(name, "grey"), linewidth=1.2,
                       label=f"{name} ({value:.1f})")
    if own_share is not None and (references or {}).get("AHAMask") is not None:
        ax.scatter([100 * own_share], [references["AHAMask"]], marker="*", s=150, color="#d62728", zorder=4,
                   label=f"learned mask itself ({100 * own_share:.0f} % of heads)")
    ax.set_xlabel("heads switched on, highest learned logit first (% of all heads)")
    ax.set_ylabel(metric_label(metric))
    ax.set_xlim(-2, 102)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or f"{metric} versus active heads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def lambda_tradeoff(rows: list[dict], path: str, metric: str, total_heads: int | None = None,
                    title: str = "") -> None:
    """Figure 5: sparsity weight lambda against active heads (bars) and the metric (line).

    Lambdas sit at even positions: the sweep includes 0, which a log axis cannot show.
    """
    plt = _plt()
    rows = sorted(rows, key=lambda r: r["lambda"])
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.bar(x, [r["active"] for r in rows], color="#9ecae1", label="active heads (bars, left axis)")
    ax.set_xticks(x, [f"{r['lambda']:g}" for r in rows])
    ax.set_xlabel("sparsity weight lambda (loss = CE + lambda x active heads)")
    ax.set_ylabel("active heads" + (f" (of {total_heads})" if total_heads else ""))
    if total_heads:
        ax.set_ylim(0, total_heads * 1.15)
    for xi, r in zip(x, rows):
        ax.text(xi, r["active"], str(r["active"]), ha="center", va="bottom", fontsize=8)
    right = ax.twinx()
    values = [r.get("metric") for r in rows]
    right.plot(x, values, color="#d62728", marker="o", label=f"{metric} (line, right axis)")
    right.set_ylabel(metric_label(metric), color="#d62728")
    right.set_ylim(0, max([105.0] + [1.05 * v for v in values if v is not None]))
    handles = [h for a in (ax, right) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower left")
    ax.set_title(title or "Sparsity versus performance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def prompt_spread(per_task: dict[str, list[float]], path: str, ylabel: str = "metric",
                  ahamask: dict[str, float] | None = None, title: str = "") -> None:
    """Figure 2: the spread of a task's metric over instruction wordings (box + points), with the
    instruction-free AHAMask result as a star."""
    import random

    plt = _plt()
    tasks = [t for t, values in per_task.items() if any(v is not None for v in values)]
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 + 1.3 * len(tasks)), 3.6))
    data = [[v for v in per_task[t] if v is not None] for t in tasks]
    if tasks:
        ax.boxplot(data, positions=range(len(tasks)), widths=0.5, showfliers=False)
    jitter = random.Random(0)  # fixed: the figure must not change between runs
    for i, values in enumerate(data):
        ax.scatter([i + jitter.uniform(-0.12, 0.12) for _ in values], values, s=14, alpha=0.7, color="#1f77b4",
                   label="with instruction (one point per wording)" if i == 0 else None, zorder=3)
    starred = False
    for i, t in enumerate(tasks):
        if ahamask and ahamask.get(t) is not None:
            ax.scatter([i], [ahamask[t]], marker="*", s=140, color="#d62728", zorder=4,
                       label=None if starred else "AHAMask (no instruction)")
            starred = True
    ax.set_xticks(range(len(tasks)), [f"{t}\n({len(d)} wordings)" for t, d in zip(tasks, data)])
    ax.set_xlabel("task")
    ax.set_ylabel(ylabel)
    shown = [v for d in data for v in d] + [v for v in (ahamask or {}).values() if v is not None]
    top = max([v for v in shown if math.isfinite(v)] + [100.0])  # a NaN metric (empty set) sets no limit
    ax.set_ylim(0, top * 1.08)
    if tasks:
        ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title or "Instruction wording sensitivity (ungated model)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# axis labels of the test-set names the shipped configs use; any other name labels itself
SET_LABELS = {None: "in-domain", "ind": "in-domain", "ood": "out-of-domain", "clean": "test-clean",
              "other": "test-other"}


def set_label(eval_set: str | None) -> str:
    """A test set's name (from its metric key) as an axis label (None: the unnamed set)."""
    return SET_LABELS.get(eval_set, eval_set)


def draw_all(run_dirs: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Every figure that the ``summary.json`` files under ``run_dirs`` allow (written by
    ``analysis.ablations``); returns the PNGs written into ``out``."""
    from ..masking import load_mask
    from ..tasks import get_task
    from .ablations import metric_entries
    from .masks import jaccard_matrix

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def target(stem: str) -> Path:
        path, n = out / f"{stem}.png", 1
        while path in written:  # two studies of one kind and task: keep both
            n += 1
            path = out / f"{stem}_{n}.png"
        written.append(path)
        return path

    prompts: dict[str, list[float]] = {}
    prompt_metrics: dict[str, str] = {}
    ahamask: dict[str, float] = {}
    learned: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}
    transfers: dict[str, dict[str, float | None]] = {}
    transfer_metric: set[str] = set()
    for path in sorted(p for d in run_dirs for p in Path(d).rglob("summary.json")):
        s = json.loads(path.read_text())
        kind, task, metric = s.get("kind"), s.get("task", "?"), s.get("metric", "metric")
        if kind == "lambda" and s["rows"]:
            lambda_tradeoff(s["rows"], str(target(f"fig5_lambda_{task}")), metric, s["rows"][0].get("total"),
                            title=f"{task}: sparsity weight versus active heads and {metric_name(metric)}")
            masks = {f"lambda {r['lambda']:g}": load_mask(r["mask"]).mask for r in s["rows"]
                     if Path(r["mask"]).is_file()}
            if masks:
                layer_profile(masks, str(target(f"layer_profile_lambda_{task}")),
                              title=f"{task}: active heads per layer as lambda grows")
        elif kind == "progressive" and s["rows"]:
            source = Path(s.get("mask", ""))
            own = load_mask(source) if source.is_file() else None
            metric_vs_share(s["rows"], str(target(f"fig4_progressive_{task}")), metric, s.get("references"),
                            title=f"{task}: progressive activation of the learned mask's heads",
                            own_share=own.active() / own.mask.numel() if own is not None else None)
        elif kind == "prompts":  # one box per study: a task's second study is named by its run folder
            key = task if task not in prompts else f"{task} ({path.parent.parent.name})"
            prompts[key] = [r["metric"] for r in s["rows"]]
            prompt_metrics[key] = metric
            if s.get("ahamask") is not None:
                ahamask[key] = s["ahamask"]
        elif kind == "seeds":
            names = [f"seed {r['seed']} ({r['active']} on)" for r in s["rows"]]
            inter = s.get("intersection") or {}
            jaccard_heatmap(torch.tensor(s["jaccard"]), names, str(target(f"seeds_jaccard_{task}")),
                            title=f"{task}: Jaccard of the masks of {len(names)} seeds\nintersection of all: "
                                  f"{inter.get('active', '?')} heads, {metric_name(metric)} "
                                  f"{_fmt(inter.get('metric'))}")
        elif kind == "held_out" and s["rows"]:
            values: dict[str, dict[str, float | None]] = {}
            for r in s["rows"]:
                values.setdefault(r["set"], {})[r["condition"]] = r["metric"]
            grouped_bars(values, str(target(f"ood_{task}")), metric_label(metric),
                         f"{task}: other test sets (out of domain)", "test set")
        elif kind == "transfer":
            transfers.setdefault(task, {})[s.get("label", path.parent.name)] = s.get("metric")
            transfer_metric.add(metric_label(get_task(task).primary))  # its "metric" is the value
        elif kind == "four_conditions":
            primary = get_task(task).primary
            values = {}
            for cond, res in s["conditions"].items():
                for t, metric, eval_set, value in metric_entries(res["metrics"], f"{path} ({cond})"):
                    if t == task and metric == primary:
                        values.setdefault(set_label(eval_set), {})[cond] = value
            if values:
                heads = f"{s.get('active', '?')}/{s.get('total', '?')} heads"
                grouped_bars(values, str(target(f"conditions_{task}")), metric_label(primary),
                             f"{task}: four conditions (AHAMask and random mask: {heads})", "test set")
            if Path(s["mask"]).is_file():
                mask = load_mask(s["mask"]).mask
                group = learned.setdefault(tuple(mask.shape), {})
                group[task if task not in group else f"{task} ({path.parent.name})"] = mask
    if prompts:
        labels = {metric_label(m) for m in prompt_metrics.values()}
        ylabel = labels.pop() if len(labels) == 1 else "primary metric of each task (0-100)"
        prompt_spread(prompts, str(target("fig2_prompts")), ylabel, ahamask)
    if transfers:
        label = transfer_metric.pop() if len(transfer_metric) == 1 else "primary metric (0-100)"
        grouped_bars(transfers, str(target("transfer")), label,
                     "Masks tested on another model", "task")
    for shape, masks in learned.items():
        tag = "x".join(map(str, shape))
        if len(masks) > 1:
            jaccard_heatmap(jaccard_matrix(list(masks.values())), list(masks), str(target(f"jaccard_{tag}")))
        layer_profile(masks, str(target(f"layer_profile_{tag}")),
                      title=f"Active heads per layer of the learned masks ({tag.replace('x', ' layers x ')} heads)")
    return written


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"

