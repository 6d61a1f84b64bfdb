"""The LightningModule of AHAMask: a frozen LALM plus the n x h mask logits, trained alone.

loss = cross-entropy on the target tokens + lambda * sum(mask). The LALM never receives
gradients: every weight is frozen, so autograd records nothing before the first gated
``o_proj`` (the audio encoder runs without a graph) and nothing accumulates into weights.
Checkpoints hold the mask, optimizer and loop state only, plus the identity of the model
they belong to.

Faults: a step whose loss is NaN or inf is skipped (no update) and counted; after
``max_nonfinite_in_a_row`` such steps in a row the fit stops with :class:`NonFiniteLossError`
(the CLI's ``FaultCheckpoint`` saves a checkpoint first). The counters travel in checkpoints.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import lightning as L
import torch

from .evaluation import TaskEvaluator, loader_suffix
from .masking import HeadGate, HeadMask, load_mask
from .models.base import LALMAdapter
from .prompts import check_prompt_mode, choose_instruction
from .results import write_results


class SampleCollate:
    """Turns dataset samples into model tensors plus the text fields metrics need."""

    def __init__(self, adapter: LALMAdapter, prompt: str, seed: int = 0,
                 instruction_free: dict[str, float] | None = None,
                 instruction_free_target: str | None = None) -> None:
        self.adapter, self.prompt, self.seed = adapter, prompt, seed
        self.rng, self._worker = random.Random(seed), None
        # task -> probability of dropping the instruction (pretraining experiment only); with
        # instruction_free_target set, such examples are trained to answer that text instead
        # (e.g. "" = stay silent when not asked) rather than to do their task
        self.instruction_free = dict(instruction_free or {})
        self.instruction_free_target = instruction_free_target

    def _reseed_per_worker(self) -> None:
        # Workers receive copies of this object: give each its own random stream.
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else None
        if worker != self._worker:
            self._worker = worker
            self.rng = random.Random(self.seed * 1009 + (worker or 0) + 1)

    def _instruction(self, sample: dict) -> str | None:
        if self.rng.random() < self.instruction_free.get(sample["task"], 0.0):
            return None
        return choose_instruction(sample, self.prompt, self.rng)

    def __call__(self, samples: list[dict]) -> dict:
        self._reseed_per_worker()
        instructions = [self._instruction(s) for s in samples]
        texts = [s["text"] if ins is not None or self.instruction_free_target is None
                 else self.instruction_free_target for s, ins in zip(samples, instructions)]
        batch = self.adapter.collate([s["audio"] for s in samples], instructions, texts)
        batch.update(ids=[s["id"] for s in samples], tasks=[s["task"] for s in samples],
                     texts=texts, instructions=instructions)
        return batch


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: the fit stops (one-line message)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to this model, or holds more than the mask (one line)."""


def warmup_cosine(step: int, warmup_steps: int, total_steps: int | None, start: float, peak: float,
                  end: float) -> float:
    """Learning rate: linear start -> peak over warm-up, then cosine peak -> end until total_steps."""
    if step < warmup_steps:
        return start + (peak - start) * step / max(1, warmup_steps)
    if not total_steps or total_steps <= warmup_steps:
        return peak
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return end + 0.5 * (peak - end) * (1 + math.cos(math.pi * progress))


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
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.prompt = check_prompt_mode(prompt)
        self.adapter = model.freeze()
        self.head_mask = HeadMask(model.num_layers, model.num_heads, estimator, init_mean, init_std, temperature)
        self.gate = HeadGate(model.gated_attentions(), model.num_heads, model.head_dim)
        if mask is not None:
            self.head_mask.load_logits(load_mask(mask, self.head_mask.shape).logits)
        self.sparsity_lambda = sparsity_lambda
        self.use_mask = use_mask
        self.generation = dict(generation or {})
        self.strict_loading = False  # checkpoints carry the mask only; the LALM comes from its own files
        self.evaluator = TaskEvaluator()
        if max_nonfinite_in_a_row < 0:
            raise ValueError(f"max_nonfinite_in_a_row: expected an integer >= 0, got {max_nonfinite_in_a_row}")
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0

    # --- data plumbing ----------------------------------------------------------------
    def collate(self) -> SampleCollate:
        return SampleCollate(self.adapter, self.prompt, self.hparams.seed)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "collate_fn"):
            dm.collate_fn = self.collate()
        if dm is not None and getattr(dm, "rejects_path", "unset") is None and self.trainer.log_dir:
            # bad samples are listed beside the logs unless the config says where
            dm.rejects_path = str(Path(self.trainer.log_dir) / "rejects.jsonl")

    # --- training -----------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        b = len(batch["ids"])
        mask = self.head_mask(b if self.hparams.per_sample_mask else None)
        with self.gate.apply(mask):
            ce = self.adapter.loss(batch)
        active = mask.sum() / (b if mask.dim() == 3 else 1)
        loss = ce + self.sparsity_lambda * active
        if not torch.isfinite(loss):
            # Skip the step (Lightning skips backward and the update on None) and count it;
            # on_train_batch_end stops a run that keeps producing them.
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            self.log("train/nonfinite_total", float(self.nonfinite_total), batch_size=b)
            return None
        self.nonfinite_in_a_row = 0
        self.log_dict({"train/ce": ce.detach(), "train/loss": loss.detach(), "train/active_sampled": active.detach(),
                       "train/temperature": self.head_mask.temperature, "train/lambda": float(self.sparsity_lambda)},
                      prog_bar=False, batch_size=b)
        self.log("train/active", float(self.head_mask.active_heads()), prog_bar=True, batch_size=b)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Checked after the callbacks' batch-end hooks (periodic checkpoints included), so the
        # state a FaultCheckpoint saves on this error is that of a finished step.
        limit = self.hparams.get("max_nonfinite_in_a_row", 0)
        if limit and self.nonfinite_in_a_row >= limit:
            raise NonFiniteLossError(
                f"training stopped at step {self.global_step}: {self.nonfinite_in_a_row} non-finite (NaN/inf) "
                f"losses in a row (model.init_args.max_nonfinite_in_a_row={limit}; {self.nonfinite_total} skipped "
                f"in all)")

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW([self.head_mask.logits], lr=hp.lr, weight_decay=0.0)
        total = hp.total_steps
        if total is None and self._trainer is not None:
            est = self.trainer.estimated_stepping_batches
            total = int(est) if est is not None and math.isfinite(est) else None
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, hp.warmup_steps, total, hp.warmup_lr, hp.lr, hp.final_lr) / hp.lr
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- evaluation -------------------------------------------------------------------
    def eval_mask(self) -> torch.Tensor | None:
        return self.head_mask.eval_gate() if self.use_mask else None

    def _generate(self, batch: dict) -> list[str]:
        with self.gate.apply(self.eval_mask()):
            return self.adapter.generate(batch, **self.generation)

    def _eval_step(self, batch: dict, stage: str, dataloader_idx: int) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        suffix = loader_suffix(dm, stage, dataloader_idx) if dm is not None else ""
        self.evaluator.update(batch, self._generate(batch), self.device, suffix)

    def _eval_epoch_end(self, prefix: str) -> dict[str, float]:
        results = self.evaluator.compute(prefix)
        if results:
            self.log_dict(results, add_dataloader_idx=False)
        return results

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
        out = Path(self.hparams.results_dir or self.trainer.log_dir or ".")  # log_dir broadcasts: all ranks
        if self.trainer.is_global_zero:
            write_results(out, results, self.evaluator.predictions, self.describe_run())

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        preds = self._generate(batch)
        return [{"id": i, "task": t, "prediction": p} for i, t, p in zip(batch["ids"], batch["tasks"], preds)]

    # --- identity and checkpoints ----------------------------------------------------------
    def describe_run(self) -> dict:
        hp = dict(self.hparams)
        return {**self.adapter.describe(), "prompt": self.prompt, "use_mask": self.use_mask,
                "active_heads": self.head_mask.active_heads() if self.use_mask else None,
                "estimator": hp["estimator"], "sparsity_lambda": float(self.sparsity_lambda),
                "mask": hp.get("mask")}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("head_mask.")}
        checkpoint["ahamask_model"] = self.adapter.describe()
        checkpoint["ahamask_faults"] = {"nonfinite_in_a_row": self.nonfinite_in_a_row,
                                        "nonfinite_total": self.nonfinite_total}

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
