"""Figures as PNG: Jaccard heat map (paper Figure 3) and per-layer active-head profile."""
from __future__ import annotations

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
