"""Schedules and monitoring for mask training: the temperature and sparsity-weight schedules (acting
through the module's public schedule interface, :class:`ScheduledMask`), and the mask files and
plots (:class:`MaskMonitor`). The callbacks ``ahamask fit`` adds by itself for exact resume and
fault reports are in :mod:`.reliability`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import lightning as L
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from .masking import save_mask

PRESETS = {
    # AHAMask paper: tau linear 4.0 -> 0.5, held after ~3k steps.
    "paper": {"start": 4.0, "end": 0.5, "steps": 3000, "fraction": None},
    # Released code: 4.0 -> 0.05 over the first 30 % of the steps.
    "official": {"start": 4.0, "end": 0.05, "steps": None, "fraction": 0.3},
}


@runtime_checkable
class ScheduledMask(Protocol):
    """What the schedule callbacks need of a module (``AHAMaskModule`` provides it): they act
    through these public members, as Lightning's own callbacks act on a module through its API."""

    schedule_total_steps: int | None

    @property
    def configured_sparsity_lambda(self) -> float: ...

    def set_temperature(self, value: float) -> None: ...

    def set_sparsity_lambda(self, value: float) -> None: ...


def check_scheduled_module(callback: L.Callback, pl_module: L.LightningModule) -> None:
    """One-line ``TypeError`` when a schedule callback is given a module it cannot schedule."""
    if not isinstance(pl_module, ScheduledMask):
        raise TypeError(f"{type(callback).__name__} schedules an AHAMaskModule's mask training; "
                        f"got a {type(pl_module).__name__}, which has no set_temperature/set_sparsity_lambda")


def _total_steps(trainer: L.Trainer) -> int | None:
    est = trainer.estimated_stepping_batches
    return int(est) if est is not None and est != float("inf") else None


class TemperatureAnnealing(L.Callback):
    """Linear temperature schedule start -> end over ``steps`` (or ``fraction`` of the run), then held.

    The run's length for ``fraction`` is the learning-rate schedule's (the module's
    ``schedule_total_steps``: ``total_steps``, or the trainer's length, or on a resume the length
    the checkpoint's run was scheduled for), so a resume with another ``max_steps`` keeps both
    schedules where they were rather than re-stretching the temperature alone.
    """

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

    def anneal_steps(self, trainer: L.Trainer, run_steps: int | None = None) -> int:
        if self.fraction is not None:
            total = run_steps or _total_steps(trainer)
            if total is None:
                raise ValueError("TemperatureAnnealing.fraction needs a run with a known length (trainer.max_steps)")
            return max(1, int(self.fraction * total))
        return max(1, int(self.steps))

    def value(self, step: int, anneal_steps: int) -> float:
        t = min(1.0, step / anneal_steps)
        return self.start + (self.end - self.start) * t

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_scheduled_module(self, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: ScheduledMask, batch: Any,
                             batch_idx: int) -> None:
        anneal = self.anneal_steps(trainer, pl_module.schedule_total_steps)
        pl_module.set_temperature(self.value(trainer.global_step, anneal))


class SparsityPenalty(L.Callback):
    """Sets the loss weight lambda of sum(mask), optionally ramped up linearly over ``warmup_steps``.

    ``lam`` None (the default) schedules the module's own ``sparsity_lambda``, so a YAML that
    carries this callback still follows ``--model.init_args.sparsity_lambda``. A ``lam`` given here
    and a different non-zero ``sparsity_lambda`` are refused (:func:`check_sparsity_settings`)
    rather than one silently winning.
    """

    def __init__(self, lam: float | None = None, warmup_steps: int = 0) -> None:
        self.lam, self.warmup_steps = lam, warmup_steps
        self.target = lam if lam is not None else 0.0

    def value(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return self.target
        return self.target * min(1.0, step / self.warmup_steps)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_scheduled_module(self, pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: ScheduledMask) -> None:
        configured = pl_module.configured_sparsity_lambda
        check_sparsity_settings(self.lam, configured)
        self.target = configured if self.lam is None else self.lam

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: ScheduledMask, batch: Any,
                             batch_idx: int) -> None:
        pl_module.set_sparsity_lambda(self.value(trainer.global_step))


def check_sparsity_settings(callback_lam: float | None, module_lambda: float | None) -> None:
    """One-line ``ValueError`` when a ``SparsityPenalty.lam`` and the module's ``sparsity_lambda``
    both set lambda, differently."""
    if callback_lam is not None and module_lambda and float(callback_lam) != float(module_lambda):
        raise ValueError(f"SparsityPenalty.lam={callback_lam} and model.init_args.sparsity_lambda={module_lambda} "
                         "disagree: set lambda in one place (a SparsityPenalty without lam schedules "
                         "the model's sparsity_lambda)")


def heatmap_figure(mask: torch.Tensor, title: str = "") -> Figure:
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

    def __init__(self, every_n_steps: int = 100, image_every_n_steps: int = 500,
                 filename: str = "mask.safetensors") -> None:
        self.every_n_steps, self.image_every_n_steps, self.filename = every_n_steps, image_every_n_steps, filename

    def _metadata(self, pl_module: L.LightningModule) -> dict:
        desc = pl_module.adapter.describe()
        return {"model_id": desc["model_id"], "estimator": pl_module.hparams.estimator,
                "lambda": pl_module.sparsity_lambda, "step": pl_module.global_step, "prompt": pl_module.prompt}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0:
            hard = pl_module.head_mask.hard()
            pl_module.log_dict({f"mask/layer_{i:02d}": float(v) for i, v in enumerate(hard.sum(1))},
                               batch_size=len(batch["ids"]))
        if self.image_every_n_steps and step % self.image_every_n_steps == 0:
            self._log_image(trainer, pl_module, step)

    def _log_image(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_figure"):
            return
        import matplotlib.pyplot as plt

        fig = heatmap_figure(pl_module.head_mask.hard())
        experiment.add_figure("mask/heatmap", fig, global_step=step)
        plt.close(fig)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        ckpt_cb = trainer.checkpoint_callback
        dirpath = getattr(ckpt_cb, "dirpath", None) if ckpt_cb is not None else None
        if dirpath and trainer.is_global_zero:
            Path(dirpath).mkdir(parents=True, exist_ok=True)
            save_mask(Path(dirpath) / f"mask-step{trainer.global_step}.safetensors", pl_module.head_mask.logits,
                      **self._metadata(pl_module))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = Path(trainer.log_dir or ".")  # log_dir broadcasts: every rank must ask
        if not trainer.is_global_zero:
            return
        out.mkdir(parents=True, exist_ok=True)
        save_mask(out / self.filename, pl_module.head_mask.logits, **self._metadata(pl_module))
        self._log_image(trainer, pl_module, trainer.global_step)
        # the folder is the logger's version of this run (a resumed fit writes a new one): say which
        heads = pl_module.head_mask.logits.numel()
        print(f"mask: {out / self.filename} ({pl_module.head_mask.active_heads()} of {heads} heads on)", flush=True)
