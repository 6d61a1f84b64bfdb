"""Schedules and monitoring for mask training: temperature, sparsity weight, mask files and plots."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from .masking import save_mask

PRESETS = {
    # AHAMask paper: tau linear 4.0 -> 0.5, held after ~3k steps.
    "paper": {"start": 4.0, "end": 0.5, "steps": 3000, "fraction": None},
    # Released code: 4.0 -> 0.05 over the first 30 % of the steps.
    "official": {"start": 4.0, "end": 0.05, "steps": None, "fraction": 0.3},
}


def _total_steps(trainer: L.Trainer) -> int | None:
    est = trainer.estimated_stepping_batches
    return int(est) if est is not None and est != float("inf") else None


class TemperatureAnnealing(L.Callback):
    """Linear temperature schedule start -> end over ``steps`` (or ``fraction`` of the run), then held."""

    def __init__(self, preset: str | None = "paper", start: float | None = None, end: float | None = None,
                 steps: int | None = None, fraction: float | None = None) -> None:
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"TemperatureAnnealing.preset: expected one of {sorted(PRESETS)}, got {preset!r}")
        base = dict(PRESETS[preset]) if preset else {"start": 4.0, "end": 0.5, "steps": 3000, "fraction": None}
        for key, value in (("start", start), ("end", end), ("steps", steps), ("fraction", fraction)):
            if value is not None:
                base[key] = value
        if steps is not None:
            base["fraction"] = fraction
        self.start, self.end, self.steps, self.fraction = base["start"], base["end"], base["steps"], base["fraction"]

    def anneal_steps(self, trainer: L.Trainer) -> int:
        if self.fraction is not None:
            total = _total_steps(trainer)
            if total is None:
                raise ValueError("TemperatureAnnealing.fraction needs a run with a known length (trainer.max_steps)")
            return max(1, int(self.fraction * total))
        return max(1, int(self.steps))

    def value(self, step: int, anneal_steps: int) -> float:
        t = min(1.0, step / anneal_steps)
        return self.start + (self.end - self.start) * t

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.head_mask.temperature.fill_(self.value(trainer.global_step, self.anneal_steps(trainer)))


class SparsityPenalty(L.Callback):
    """Sets the loss weight lambda of sum(mask), optionally ramped up linearly over ``warmup_steps``."""

    def __init__(self, lam: float = 1e-4, warmup_steps: int = 0) -> None:
        self.lam, self.warmup_steps = lam, warmup_steps

    def value(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return self.lam
        return self.lam * min(1.0, step / self.warmup_steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.sparsity_lambda = self.value(trainer.global_step)


def heatmap_figure(mask: torch.Tensor, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads = mask.shape
    fig, ax = plt.subplots(figsize=(max(3.0, heads * 0.18 + 1.5), max(2.5, layers * 0.18 + 1.0)))
    ax.imshow(mask.cpu().numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title or f"active heads {int(mask.sum())}/{mask.numel()}")
    fig.tight_layout()
    return fig


class MaskMonitor(L.Callback):
    """Logs active heads per layer and a mask heat map; writes the mask file at the end of fit and
    beside every checkpoint (``mask-step{N}.safetensors`` in the checkpoint directory)."""

    def __init__(self, every_n_steps: int = 100, image_every_n_steps: int = 500, filename: str = "mask.safetensors"):
        self.every_n_steps, self.image_every_n_steps, self.filename = every_n_steps, image_every_n_steps, filename

    def _metadata(self, pl_module) -> dict:
        desc = pl_module.adapter.describe()
        return {"model_id": desc["model_id"], "estimator": pl_module.hparams.estimator,
                "lambda": pl_module.sparsity_lambda, "step": pl_module.global_step, "prompt": pl_module.prompt}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0:
            hard = pl_module.head_mask.hard()
            pl_module.log_dict({f"mask/layer_{i:02d}": float(v) for i, v in enumerate(hard.sum(1))},
                               batch_size=len(batch["ids"]))
        if self.image_every_n_steps and step % self.image_every_n_steps == 0:
            self._log_image(trainer, pl_module, step)

    def _log_image(self, trainer, pl_module, step: int) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_figure"):
            return
        import matplotlib.pyplot as plt

        fig = heatmap_figure(pl_module.head_mask.hard())
        experiment.add_figure("mask/heatmap", fig, global_step=step)
        plt.close(fig)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        ckpt_cb = trainer.checkpoint_callback
        dirpath = getattr(ckpt_cb, "dirpath", None) if ckpt_cb is not None else None
        if dirpath and trainer.is_global_zero:
            Path(dirpath).mkdir(parents=True, exist_ok=True)
            save_mask(Path(dirpath) / f"mask-step{trainer.global_step}.safetensors", pl_module.head_mask.logits,
                      **self._metadata(pl_module))

    def on_fit_end(self, trainer, pl_module) -> None:
        out = Path(trainer.log_dir or ".")  # log_dir broadcasts: every rank must ask
        if not trainer.is_global_zero:
            return
        out.mkdir(parents=True, exist_ok=True)
        save_mask(out / self.filename, pl_module.head_mask.logits, **self._metadata(pl_module))
        self._log_image(trainer, pl_module, trainer.global_step)
