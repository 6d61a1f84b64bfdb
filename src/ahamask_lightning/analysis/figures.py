"""Figures as PNG: Jaccard heat map (paper Figure 3), per-layer active heads, metric versus active
heads (Figure 4), lambda trade-off (Figure 5) and prompt-wording spread (Figure 2)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def jaccard_heatmap(matrix: torch.Tensor, names: list[str], path: str) -> None:
    plt = _plt()
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    im = ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                    color="white" if matrix[i, j] < 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label="Jaccard index")
    ax.set_title("Jaccard similarity of learned masks")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def layer_profile(masks: dict[str, torch.Tensor], path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, m in masks.items():
        ax.plot(range(m.shape[0]), (m.sum(1) / m.shape[1]).numpy(), marker="o", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of heads active")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("Active heads per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def metric_vs_share(rows: list[dict], path: str, metric: str, references: dict[str, float] | None = None,
                    title: str = "") -> None:
    """Figure 4: the metric as more and more heads are switched on (``rows``: share, metric)."""
    plt = _plt()
    rows = sorted((r for r in rows if r.get("metric") is not None), key=lambda r: r["share"])
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot([100 * r["share"] for r in rows], [r["metric"] for r in rows], marker="o", label="top heads on")
    for (name, value), style in zip((references or {}).items(), ("--", ":", "-.")):
        if value is not None:
            ax.axhline(value, linestyle=style, color="grey", label=name)
    ax.set_xlabel("share of heads active (%)")
    ax.set_ylabel(metric)
    ax.set_xlim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{metric} versus active heads")
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
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.bar(x, [r["active"] for r in rows], color="#9ecae1", label="active heads")
    ax.set_xticks(x, [f"{r['lambda']:g}" for r in rows])
    ax.set_xlabel("sparsity weight lambda")
    ax.set_ylabel("active heads" + (f" (of {total_heads})" if total_heads else ""))
    if total_heads:
        ax.set_ylim(0, total_heads * 1.05)
    right = ax.twinx()
    right.plot(x, [r.get("metric") for r in rows], color="#d62728", marker="o", label=metric)
    right.set_ylabel(metric, color="#d62728")
    for xi, r in zip(x, rows):
        ax.text(xi, r["active"], str(r["active"]), ha="center", va="bottom", fontsize=8)
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
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 1.3 * len(tasks)), 3.6))
    data = [[v for v in per_task[t] if v is not None] for t in tasks]
    if tasks:
        ax.boxplot(data, positions=range(len(tasks)), widths=0.5, showfliers=False)
    jitter = random.Random(0)  # fixed: the figure must not change between runs
    for i, values in enumerate(data):
        ax.scatter([i + jitter.uniform(-0.12, 0.12) for _ in values], values, s=14, alpha=0.7, color="#1f77b4",
                   label="with instruction (one per wording)" if i == 0 else None, zorder=3)
    for i, t in enumerate(tasks):
        if ahamask and ahamask.get(t) is not None:
            ax.scatter([i], [ahamask[t]], marker="*", s=140, color="#d62728", zorder=4,
                       label="AHAMask (no instruction)" if i == 0 else None)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel(ylabel)
    if tasks:
        ax.legend(fontsize=8)
    ax.set_title(title or "Sensitivity to the instruction's wording")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_all(run_dirs: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Every figure that the ``summary.json`` files under ``run_dirs`` allow (written by
    ``analysis.ablations``); returns the PNGs written into ``out``."""
    from ..masking import load_mask
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
    ahamask: dict[str, float] = {}
    learned: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}
    for path in sorted(p for d in run_dirs for p in Path(d).rglob("summary.json")):
        s = json.loads(path.read_text())
        kind, task, metric = s.get("kind"), s.get("task", "?"), s.get("metric", "metric")
        if kind == "lambda" and s["rows"]:
            lambda_tradeoff(s["rows"], str(target(f"fig5_lambda_{task}")), metric, s["rows"][0].get("total"),
                            title=f"{task}: sparsity versus {metric}")
        elif kind == "progressive" and s["rows"]:
            metric_vs_share(s["rows"], str(target(f"fig4_progressive_{task}")), metric, s.get("references"),
                            title=f"{task}: progressive activation")
        elif kind == "prompts":
            prompts.setdefault(task, []).extend(r["metric"] for r in s["rows"])
            if s.get("ahamask") is not None:
                ahamask[task] = s["ahamask"]
        elif kind == "seeds":
            names = [f"seed {r['seed']}" for r in s["rows"]]
            jaccard_heatmap(torch.tensor(s["jaccard"]), names, str(target(f"seeds_jaccard_{task}")))
        elif kind == "four_conditions" and Path(s["mask"]).is_file():
            mask = load_mask(s["mask"]).mask
            group = learned.setdefault(tuple(mask.shape), {})
            group[task if task not in group else f"{task} ({path.parent.name})"] = mask
    if prompts:
        prompt_spread(prompts, str(target("fig2_prompts")), "primary metric", ahamask)
    for shape, masks in learned.items():
        tag = "x".join(map(str, shape))
        if len(masks) > 1:
            jaccard_heatmap(jaccard_matrix(list(masks.values())), list(masks), str(target(f"jaccard_{tag}")))
        layer_profile(masks, str(target(f"layer_profile_{tag}")))
    return written
