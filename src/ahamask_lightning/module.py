"""The LightningModule of AHAMask: a frozen LALM plus the n x h mask logits, trained alone.

loss = cross-entropy on the target tokens + lambda * sum(mask). The LALM never receives
gradients: every weight is frozen, so autograd records nothing before the first gated
``o_proj`` (the audio encoder runs without a graph) and nothing accumulates into weights.
Checkpoints hold the mask, optimizer and loop state only, plus the identity of the model
they belong to.

Faults: a step whose loss is NaN or inf (on any rank) is skipped (no update) and counted; after
``max_nonfinite_in_a_row`` such steps in a row the fit stops with :class:`NonFiniteLossError`
(the CLI's ``FaultCheckpoint`` saves a checkpoint first). The counters travel in checkpoints.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from .data.collate import SampleCollate
from .data.loader import is_padding_duplicate
from .evaluation import TaskEvaluator, eval_set_of, gather_objects
from .masking import HeadGate, HeadMask, load_mask
from .masking.estimators import CONTINUOUS
from .masking.prune import PrunedEval
from .models.base import LALMAdapter
from .prompts import check_prompt_mode
from .results import write_predictions, write_results


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: the fit stops (one-line message)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to this model, or holds more than the mask (one line)."""


class NoMaskToEvaluateError(ValueError):
    """``test``/``validate``/``predict`` with the mask on, but neither a mask file nor a checkpoint
    gave it: the initial logits keep every head, so the run would be the ungated model (one line)."""


NO_MASK_HINT = ("give a mask file (--model.init_args.mask FILE) or a fit's checkpoint (--ckpt_path), or "
                "--model.init_args.use_mask false for the model without a mask")


# Options of how a run evaluates, not of what the mask learned: left out of the checkpoint's
# hyperparameters, which LightningCLI applies over the command line when ``--ckpt_path`` is given
# (``test --ckpt_path X --model.init_args.use_mask false`` would otherwise run the masked condition).
EVALUATION_OPTIONS = ("prompt", "mask", "use_mask", "generation", "results_dir", "prune")


def nonfinite_on_any_rank(loss: torch.Tensor) -> bool:
    """Whether ``loss`` is NaN/inf on this process or, in a distributed run, on any other (one
    all-reduce of a flag): the ranks then agree on skipping the step."""
    bad = not bool(torch.isfinite(loss))
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return bad
    flag = torch.tensor(float(bad), device=loss.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def warn_if_other_model(path: str, mask_model: str | None, model: str | None) -> None:
    """One line when a mask file was learned on another model (same shape, e.g. Qwen2-Audio-7B
    Base and Instruct): testing it there is a transfer, which the paper runs on purpose."""
    if mask_model and model and mask_model != model:
        print(f"ahamask: {path} was learned on {mask_model}; this model is {model} (a transfer)", file=sys.stderr)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None, start: float,
                  peak: float, end: float) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's schedulers in sequence, stepped once per optimizer step: linear ``start -> peak`` over
    ``warmup_steps`` (LinearLR), cosine ``peak -> end`` until ``total_steps`` (CosineAnnealingLR), then
    ``end`` held (ConstantLR; a cosine restarted past its end would climb again). Without a
    ``total_steps`` beyond the warm-up the rate stays at ``peak``. The optimizer's lr must be ``peak``."""
    from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR

    phases: list[torch.optim.lr_scheduler.LRScheduler] = []
    milestones: list[int] = []
    if warmup_steps > 0:  # LinearLR refuses a zero start factor: a start of 0 becomes 1e-12 of the peak
        phases.append(LinearLR(optimizer, start_factor=max(start / peak, 1e-12), end_factor=1.0,
                               total_iters=warmup_steps))
    if total_steps and total_steps > warmup_steps:
        milestones += [warmup_steps] if phases else []
        phases.append(CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=end))
        milestones.append(total_steps)
        phases.append(ConstantLR(optimizer, factor=end / peak, total_iters=2**62))
    if not phases:
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    return phases[0] if len(phases) == 1 else SequentialLR(optimizer, phases, milestones)


class AHAMaskModule(L.LightningModule):
    """Train (``fit``) or evaluate (``validate``/``test``/``predict``) a head mask on a frozen LALM.

    Args:
        model: the frozen LALM adapter (any ``LALMAdapter``: TinyLALM, Qwen2-Audio, SALMONN...).
        estimator: ``logistic`` (Gumbel-Sigmoid), ``official`` (released code), ``hard_concrete``, or
            ``sigmoid``, the continuous gate sigmoid(M) at training and test (a diagnostic bound).
        sparsity_lambda: weight of sum(mask) in the loss (``SparsityPenalty`` may schedule it).
        lr, warmup_lr, warmup_steps, final_lr, total_steps: AdamW on the logits only, no weight
            decay; linear warm-up then cosine (total_steps defaults to the trainer's).
        prompt: instruction mode (see ``prompts``): ``none`` trains/evaluates instruction-free.
        mask: a mask file to start from (fit) or to evaluate (test).
        use_mask: False evaluates the ungated model (the instruction / no-instruction baselines).
        per_sample_mask: draw an independent mask sample for every batch element in training.
        generation: overrides of the adapter's generation settings for validate/test/predict.
        results_dir: where test metrics and predictions are written (default: the logger's dir).
        max_nonfinite_in_a_row: a NaN/inf loss skips its step; this many in a row stop the fit
            (0: never stop).
        prune: decode validate/test/predict with the physically pruned model (the off heads' weights
            removed, ``masking.prune``), built once per evaluation mask; same text as the gate.
            Training is unaffected.
    """

    def __init__(
        self,
        model: LALMAdapter,
        estimator: str = "logistic",
        init_mean: float = 4.0,
        init_std: float = 0.02,
        temperature: float = 4.0,
        sparsity_lambda: float = 0.0,
        lr: float = 1e-2,
        warmup_lr: float = 1e-6,
        warmup_steps: int = 3000,
        final_lr: float = 1e-4,
        total_steps: int | None = None,
        prompt: str = "none",
        mask: str | None = None,
        use_mask: bool = True,
        per_sample_mask: bool = False,
        generation: dict | None = None,
        results_dir: str | None = None,
        seed: int = 0,
        max_nonfinite_in_a_row: int = 10,
        prune: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", *EVALUATION_OPTIONS])
        self.prompt = check_prompt_mode(prompt)
        self.adapter = model.freeze()
        self.head_mask = HeadMask(model.num_layers, model.num_heads, estimator, init_mean, init_std, temperature)
        self.gate = HeadGate(model.gated_attentions(), model.num_heads, model.head_dim)
        self.mask_metadata: dict[str, str] = {}  # of the mask file loaded (``mask random`` records its seed)
        self.mask_file = mask
        self.mask_source: str | None = None  # what gave the logits: "file", "checkpoint", or None (initial)
        if mask is not None:
            loaded = load_mask(mask, self.head_mask.shape)
            self.head_mask.load_logits(loaded.logits)
            self.mask_metadata = dict(loaded.metadata)
            self.mask_source = "file"
            warn_if_other_model(mask, loaded.metadata.get("model_id"), model.describe().get("model_id"))
        self.sparsity_lambda = sparsity_lambda
        self.use_mask = use_mask
        self.generation = dict(generation or {})
        self.results_dir_option = results_dir
        self.strict_loading = False  # checkpoints carry the mask only; the LALM comes from its own files
        self.evaluator = TaskEvaluator()
        self.predictions: list[dict] = []  # predict: this rank's records
        if max_nonfinite_in_a_row < 0:
            raise ValueError(f"max_nonfinite_in_a_row: expected an integer >= 0, got {max_nonfinite_in_a_row}")
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self._finite_since_update = 0  # finite losses since the last optimizer step (gradient accumulation)
        # the learning-rate schedule's length: saved in checkpoints, kept by a resumed run (configure_optimizers)
        self.schedule_total_steps: int | None = None
        self.resumed_schedule: dict | None = None
        self._step_mask: torch.Tensor | None = None  # the training step's mask, for backward
        if prune and estimator in CONTINUOUS:
            raise ValueError(f"prune: needs a binary mask; estimator {estimator!r} gives a continuous gate")
        self.prune = prune
        self.pruned_eval = PrunedEval(self.adapter)

    # --- schedules: the interface the TemperatureAnnealing and SparsityPenalty callbacks use -------
    @property
    def configured_sparsity_lambda(self) -> float:
        """The ``sparsity_lambda`` this module was built with (what a ``SparsityPenalty`` schedules)."""
        return float(self.hparams.sparsity_lambda)

    def set_temperature(self, value: float) -> None:
        """The temperature of the next training mask samples."""
        self.head_mask.set_temperature(value)

    def set_sparsity_lambda(self, value: float) -> None:
        """The weight of sum(mask) in the next training steps' loss."""
        self.sparsity_lambda = float(value)

    # --- data plumbing ----------------------------------------------------------------
    def collate(self) -> SampleCollate:
        """The batch builder the datamodule runs in its workers (its ``collate_fn``; the CLI links it)."""
        return SampleCollate(self.adapter, self.prompt, self.hparams.seed)

    # --- training -----------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        b = len(batch["ids"])
        if self.hparams.per_sample_mask:  # one draw per sample of the global batch (see HeadMask.forward)
            mask = self.head_mask(b, self.global_rank, self.trainer.world_size)
        else:
            mask = self.head_mask()
        self._step_mask = mask  # for backward (activation checkpointing recomputes gated layers there)
        with self.gate.apply(mask):
            ce = self.adapter.loss(batch)
        active = mask.sum() / (b if mask.dim() == 3 else 1)
        loss = ce + self.sparsity_lambda * active
        if nonfinite_on_any_rank(loss):
            # Skip the step and count it; on_train_batch_end stops a run that keeps producing them.
            # Every rank skips together (the flag is all-reduced). The step returns a loss with a zero
            # gradient rather than None, which Lightning refuses under DDP: backward then runs on
            # every rank alike and on_before_optimizer_step drops the gradient, so the optimizer leaves
            # the mask and its own state as they were.
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            self.log("train/nonfinite_total", float(self.nonfinite_total), batch_size=b)
            return self.head_mask.logits.sum() * 0.0
        self._finite_since_update += 1
        self.nonfinite_in_a_row = 0
        self.log_dict({"train/ce": ce.detach(), "train/loss": loss.detach(), "train/active_sampled": active.detach(),
                       "train/temperature": self.head_mask.temperature, "train/lambda": float(self.sparsity_lambda)},
                      prog_bar=False, batch_size=b)
        self.log("train/active", float(self.head_mask.active_heads()), prog_bar=True, batch_size=b)
        return loss

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        # An adapter with activation checkpointing recomputes its LLM layers during backward: the
        # gate must apply the step's mask then too, or the recomputed graph would be ungated.
        with self.gate.apply(self._step_mask):
            super().backward(loss, *args, **kwargs)
        self._step_mask = None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # no finite loss since the last update (every accumulated batch skipped): no update at all
        if self._finite_since_update == 0:
            optimizer.zero_grad(set_to_none=True)
        self._finite_since_update = 0

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Checked after the callbacks' batch-end hooks (periodic checkpoints included), so the
        # state a FaultCheckpoint saves on this error is that of a finished step.
        limit = self.hparams.get("max_nonfinite_in_a_row", 0)
        if limit and self.nonfinite_in_a_row >= limit:
            raise NonFiniteLossError(
                f"training stopped at step {self.global_step}: {self.nonfinite_in_a_row} non-finite (NaN/inf) "
                f"losses in a row (model.init_args.max_nonfinite_in_a_row={limit}; {self.nonfinite_total} skipped "
                f"in all)")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = torch.optim.AdamW([self.head_mask.logits], lr=hp.lr, weight_decay=0.0)
        total = hp.total_steps
        if total is None and self.trainer_attached():
            est = self.trainer.estimated_stepping_batches
            total = int(est) if est is not None and math.isfinite(est) else None
        if self.resumed_schedule is not None and self.resumed_schedule.get("total_steps") != total:
            # Lightning restores the scheduler's state, whose shape follows the length it was built
            # for: a resumed run keeps the schedule of the run that wrote the checkpoint
            total = self._keep_checkpoint_schedule(total)
        self.schedule_total_steps = total
        sched = warmup_cosine(opt, hp.warmup_steps, total, hp.warmup_lr, hp.lr, hp.final_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _keep_checkpoint_schedule(self, planned: int | None) -> int | None:
        kept = self.resumed_schedule.get("total_steps")
        if self.global_rank == 0:
            print(f"ahamask: resuming with the checkpoint's learning-rate schedule (over {kept} steps), not one "
                  f"over {planned}: the rate holds its final value past step {kept}", file=sys.stderr)
        return kept

    def trainer_attached(self) -> bool:
        """Whether a Trainer drives this module (``self.trainer`` raises when none does)."""
        try:
            return self.trainer is not None
        except RuntimeError:
            return False

    # --- evaluation -------------------------------------------------------------------
    def eval_mask(self) -> torch.Tensor | None:
        return self.head_mask.eval_gate() if self.use_mask else None

    def _generate(self, batch: dict) -> list[str]:
        mask = self.eval_mask()
        if self.prune and mask is not None:
            with self.gate.apply(None), self.pruned_eval.use(mask):
                return self.adapter.generate(batch, **self.generation)
        with self.gate.apply(mask):
            return self.adapter.generate(batch, **self.generation)

    def _eval_step(self, batch: dict, stage: str, dataloader_idx: int) -> None:
        eval_set = eval_set_of(self.trainer.datamodule, stage, dataloader_idx)
        self.evaluator.update(batch, self._generate(batch), self.device, eval_set)

    def _eval_epoch_end(self, prefix: str) -> dict[str, float]:
        results = self.evaluator.compute(prefix, self.device)
        if results:
            self.log_dict(results, add_dataloader_idx=False)
        return results

    def check_mask_to_evaluate(self) -> None:
        """Refuse to evaluate the initial logits (every head on) as if they were a learned mask; a
        fit's own validation evaluates the mask it is learning."""
        fitting = self.trainer_attached() and self.trainer.state.fn == "fit"
        if self.use_mask and self.mask_source is None and not fitting:
            raise NoMaskToEvaluateError(f"model.init_args.mask: no mask to evaluate; {NO_MASK_HINT}")

    def on_validation_start(self) -> None:
        self.check_mask_to_evaluate()

    def on_test_start(self) -> None:
        self.check_mask_to_evaluate()

    def on_predict_start(self) -> None:
        self.check_mask_to_evaluate()

    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self.evaluator.reset()

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        results = self._eval_epoch_end("test")
        out = self.results_dir()  # log_dir broadcasts: every rank calls it
        predictions = gather_objects(self.evaluator.predictions)  # each rank decoded its own share
        if self.trainer.is_global_zero:
            write_results(out, results, predictions, self.describe_run())

    def results_dir(self) -> Path:
        """Where ``test`` writes ``test_metrics.json`` and ``predictions.jsonl`` (``predict``: the latter)."""
        return Path(self.results_dir_option or self.trainer.log_dir or ".")

    def on_predict_epoch_start(self) -> None:
        self.predictions = []

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        preds = self._generate(batch)
        eval_set = eval_set_of(self.trainer.datamodule, "predict", dataloader_idx)
        records = [{"id": i, "task": t, "instruction": ins, "prediction": p}
                   for i, t, ins, p in zip(batch["ids"], batch["tasks"], batch["instructions"], preds)
                   if not is_padding_duplicate(i)]
        records = records if eval_set is None else [{**r, "set": eval_set} for r in records]
        self.predictions.extend(records)
        return records

    def on_predict_epoch_end(self) -> None:
        out = self.results_dir()  # log_dir broadcasts: every rank calls it
        predictions = gather_objects(self.predictions)
        if self.trainer.is_global_zero:
            write_predictions(out, predictions)

    # --- identity and checkpoints ----------------------------------------------------------
    def describe_run(self) -> dict:
        hp = dict(self.hparams)
        return {**self.adapter.describe(), "prompt": self.prompt, "use_mask": self.use_mask,
                "active_heads": self.head_mask.active_heads() if self.use_mask else None,
                "estimator": hp["estimator"], "sparsity_lambda": float(self.sparsity_lambda),
                "mask": self.mask_file, **({"pruned": True} if self.prune else {}),
                **({"mask_random": "random_seed" in self.mask_metadata} if self.mask_file else {})}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("head_mask.")}
        checkpoint["ahamask_model"] = self.adapter.describe()
        checkpoint["ahamask_faults"] = {"nonfinite_in_a_row": self.nonfinite_in_a_row,
                                        "nonfinite_total": self.nonfinite_total}
        checkpoint["ahamask_schedule"] = {"total_steps": self.schedule_total_steps}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("ahamask_model")
        mine = self.adapter.describe()
        if saved is None:
            raise CheckpointMismatchError(
                f"checkpoint records no AHAMask model identity (not written by AHAMaskModule); "
                f"this model is {json.dumps(mine)}")
        if saved != mine:
            raise CheckpointMismatchError(
                f"checkpoint belongs to {json.dumps(saved)}, not to this model {json.dumps(mine)}"
            )
        extra = sorted(k for k in checkpoint.get("state_dict", {}) if not k.startswith("head_mask."))
        if extra:
            raise CheckpointMismatchError(
                f"checkpoint holds {len(extra)} tensors beyond the mask (e.g. {extra[0]}); AHAMask checkpoints "
                f"hold the mask only and the frozen weights come from the model's own files")
        faults = checkpoint.get("ahamask_faults") or {}
        self.nonfinite_in_a_row = int(faults.get("nonfinite_in_a_row", 0))
        self.nonfinite_total = int(faults.get("nonfinite_total", 0))
        self.resumed_schedule = checkpoint.get("ahamask_schedule")
        self.mask_source = "checkpoint"
        kept = (self.resumed_schedule or {}).get("total_steps")
        if self.schedule_total_steps is not None and kept is not None and kept != self.schedule_total_steps:
            # strategies that restore after setup (FSDP) configured the optimizers before this hook:
            # the temperature's schedule follows the checkpoint's, as the restored scheduler does
            self.schedule_total_steps = self._keep_checkpoint_schedule(self.schedule_total_steps)
