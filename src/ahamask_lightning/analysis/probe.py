"""Linear probes at the answer position: is the label in the residual stream, layer by layer?

A head mask can only remove heads; it cannot make a remaining head attend elsewhere except
through what it removes upstream. So if, without the instruction, the label of a task is not
linearly decodable at the position that predicts the answer (the last prompt token), no mask
can read it out there. The probe compares three conditions on the same audio: the task's
instruction without a mask, no instruction without a mask, and no instruction with a mask.

    python -m ahamask_lightning.analysis.probe --checkpoint checkpoints/tiny_lalm_8x16g \\
        --task src --mask runs/.../mask.safetensors --out runs/probe_src

Probes are multinomial logistic regressions (standardised features, L2), trained on the
train split and scored on the test split, one per hidden state (0 = embeddings).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data import ManifestDataModule
from ..data.collate import SampleCollate
from ..masking import HeadGate, load_mask

if TYPE_CHECKING:
    from ..models.tiny_lalm import TinyLALM


@torch.no_grad()
def answer_position_states(adapter: TinyLALM, gate: HeadGate, loader: Iterable[list[dict]], prompt: str,
                           mask: torch.Tensor | None, max_samples: int) -> tuple[torch.Tensor, list[str]]:
    """Hidden states ``[N, layers + 1, hidden]`` at the last prompt position, and the labels."""
    collate = SampleCollate(adapter, prompt)
    states, labels = [], []
    for samples in loader:
        batch = collate(samples)
        with gate.apply(mask):
            hidden = adapter.hidden_states(batch)
        states.append(torch.stack([h[:, -1] for h in hidden], dim=1).float())
        labels += batch["texts"]
        if len(labels) >= max_samples:
            break
    return torch.cat(states)[:max_samples], labels[:max_samples]


def probe_accuracy(train_x: torch.Tensor, train_y: list[str], test_x: torch.Tensor, test_y: list[str],
                   l2: float = 1e-2, steps: int = 300, seed: int = 0) -> float:
    """Test accuracy (%) of a logistic-regression probe fitted on ``train_x``."""
    classes = sorted(set(train_y))
    index = {c: i for i, c in enumerate(classes)}
    ytr = torch.tensor([index[y] for y in train_y])
    yte = torch.tensor([index.get(y, -1) for y in test_y])
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(xtr.shape[1], len(classes), generator=gen) * 0.01).requires_grad_()
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + l2 * w.pow(2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (xte @ w + b).argmax(-1)
    return 100.0 * (pred == yte).float().mean().item()


def layer_updates(states: torch.Tensor) -> list[float]:
    """Mean relative change ||h[l+1] - h[l]|| / ||h[l]|| that each decoder layer makes at the answer
    position: a layer near 0 is inert there (the last entry includes the final norm)."""
    delta = (states[:, 1:] - states[:, :-1]).norm(dim=-1) / states[:, :-1].norm(dim=-1).clamp_min(1e-6)
    return delta.mean(0).tolist()


def probe_layers(adapter: TinyLALM, task: str, manifests: Path, mask_path: str | None,
                 train_samples: int = 640, test_samples: int = 192,
                 batch_size: int = 16) -> dict[str, list[float]]:
    """Probe accuracy per hidden state for each condition (instruction / none / mask), and as
    ``update_<condition>`` the relative change each layer makes there (row k: layer k+1)."""
    gate = HeadGate(adapter.gated_attentions(), adapter.num_heads, adapter.head_dim)
    conditions = {"instruction": ("task", None), "none": ("none", None)}
    if mask_path:
        conditions["mask"] = ("none", load_mask(mask_path, gate.shape).mask)
    dm = ManifestDataModule(train=[str(manifests / "train" / f"{task}.jsonl")],
                            test=[str(manifests / "test" / f"{task}.jsonl")], batch_size=batch_size,
                            min_seconds=adapter.min_seconds, max_seconds=adapter.max_seconds, shuffle_buffer=1)
    dm.setup("fit")
    dm.setup("test")
    results = {}
    for name, (prompt, mask) in conditions.items():
        xtr, ytr = answer_position_states(adapter, gate, dm.train_dataloader(), prompt, mask, train_samples)
        xte, yte = answer_position_states(adapter, gate, dm.test_dataloader()[0], prompt, mask, test_samples)
        results[name] = [probe_accuracy(xtr[:, k], ytr, xte[:, k], yte) for k in range(xtr.shape[1])]
        results[f"update_{name}"] = layer_updates(xte) + [float("nan")]  # one per layer: none for the last state
    gate.remove()
    return results


def write_probe_table(results: dict[str, list[float]], out: Path, task: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    names = list(results)
    rows = [[str(k)] + [f"{results[n][k]:.3f}" if n.startswith("update_") else f"{results[n][k]:.2f}"
                        for n in names] for k in range(len(results[names[0]]))]
    with open(out / "probe.csv", "w", newline="") as f:
        csv.writer(f).writerows([["hidden_state", *names], *rows])
    header = f"| {task}: hidden state | " + " | ".join(names) + " |"
    md = "\n".join([header, "|" + "---|" * (len(names) + 1), *("| " + " | ".join(r) + " |" for r in rows)])
    (out / "probe.md").write_text(md + "\n")
    (out / "probe.json").write_text(json.dumps(results, indent=1))
    return md


def main(argv: list[str] | None = None) -> int:
    from ..models import TinyLALM

    p = argparse.ArgumentParser(prog="python -m ahamask_lightning.analysis.probe", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/tiny_lalm_8x16g")
    p.add_argument("--data", default="data/synth", help="a SynthSpeech directory (manifests/train|test/TASK.jsonl)")
    p.add_argument("--task", required=True)
    p.add_argument("--mask", help="a mask file for the 'mask' condition")
    p.add_argument("--train-samples", type=int, default=640)
    p.add_argument("--test-samples", type=int, default=192)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    manifests = Path(args.data) / "manifests"
    needed = [manifests / split / f"{args.task}.jsonl" for split in ("train", "test")]
    missing = [str(m) for m in needed + ([Path(args.mask)] if args.mask else []) if not m.is_file()]
    if missing:  # before the model loads
        print(f"{p.prog}: error: not found: {', '.join(missing)} "
              "(--data: a SynthSpeech folder, `make tiny-data`)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    adapter = TinyLALM(checkpoint=args.checkpoint).eval()
    results = probe_layers(adapter, args.task, manifests, args.mask,
                           args.train_samples, args.test_samples)
    print(write_probe_table(results, Path(args.out), args.task))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
