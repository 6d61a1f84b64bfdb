"""Pretraining of the TinyLALM testbed: every task taught from instructions (several phrasings).

This is the only place where LALM weights are trained. Whether some tasks also see
instruction-free examples (as real LALMs do for ASR in their first stage) is the
``instruction_free`` experiment knob, off by default.

An auxiliary CTC loss on the audio encoder (``ctc_weight``) teaches the encoder the words of
every speech clip, whatever task the clip is prompted with, so the LLM gets aligned, word-bearing
audio tokens early; without it 3000 CPU steps did not learn to transcribe (WER ~100 %). The CTC
head is a training aid only and is not part of the saved checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from .evaluation import TaskEvaluator, loader_suffix
from .models.tiny_lalm import PROMPT_TEMPLATE, TinyLALM, TinyLALMConfig, build_tokenizer
from .module import SampleCollate, warmup_cosine


def corpus_texts(manifests: list[str]) -> list[str]:
    """Targets of the manifests, every task instruction and the prompt: the tokenizer's training text."""
    from .tasks import TASKS, get_task

    texts = [PROMPT_TEMPLATE]
    for name in TASKS:
        texts.extend(get_task(name).instructions)
        texts.extend(get_task(name).labels or ())
    for path in manifests:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    texts.append(json.loads(line).get("text", ""))
    return texts


def utterance_transcripts(manifests: list[str]) -> dict[str, str]:
    """``meta.utt`` -> transcript, from the ASR lines of the manifests (the CTC targets)."""
    out = {}
    for path in manifests:
        with open(path) as f:
            for line in f:
                if line.strip():
                    obj = json.loads(line)
                    utt = (obj.get("meta") or {}).get("utt")
                    if obj.get("task") == "asr" and isinstance(utt, str):
                        out[utt] = obj["text"]
    return out


class PretrainCollate(SampleCollate):
    """SampleCollate plus each clip's utterance id (for the CTC transcript of any speech task)."""

    def __call__(self, samples: list[dict]) -> dict:
        batch = super().__call__(samples)
        batch["utts"] = [(s.get("meta") or {}).get("utt") for s in samples]
        return batch


class TinyLALMPretrain(L.LightningModule):
    """Train a TinyLALM from scratch on instruction + audio -> target pairs.

    Args:
        tokenizer_manifests: manifests whose targets train the BPE tokenizer (the train split).
        out_dir: where the checkpoint directory (config, fp16 safetensors, tokenizer) is written.
        config: overrides of ``TinyLALMConfig`` fields.
        instruction_free: task -> probability of dropping the instruction (experiment; default none).
        ctc_weight: weight of the encoder's auxiliary CTC loss on the clip's transcript (0: off).
    """

    def __init__(self, tokenizer_manifests: list[str], out_dir: str = "checkpoints/tiny_lalm",
                 vocab_size: int = 1000, config: dict | None = None, lr: float = 2e-3, warmup_steps: int = 300,
                 final_lr: float = 2e-5, weight_decay: float = 0.01, total_steps: int | None = None,
                 instruction_free: dict[str, float] | None = None, max_new_tokens: int = 40, seed: int = 0,
                 ctc_weight: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(seed)
        tokenizer = build_tokenizer(corpus_texts(tokenizer_manifests), vocab_size=vocab_size)
        cfg = TinyLALMConfig(**(config or {}))
        cfg.vocab_size = len(tokenizer)
        self.adapter = TinyLALM(checkpoint=None, config=cfg, tokenizer=tokenizer)
        self.evaluator = TaskEvaluator()
        self.transcripts = utterance_transcripts(tokenizer_manifests) if ctc_weight > 0 else {}
        # blank = the pad token, which is never a target
        self.ctc_head = torch.nn.Linear(cfg.enc_dim, len(tokenizer)) if ctc_weight > 0 else None

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "collate_fn"):
            dm.collate_fn = PretrainCollate(self.adapter, "random", self.hparams.seed, self.hparams.instruction_free)

    def train(self, mode: bool = True):  # the adapter pins itself to eval mode; pretraining needs train mode
        super().train(mode)
        torch.nn.Module.train(self.adapter, mode)
        return self

    def ctc_loss(self, hidden: torch.Tensor, lens: torch.Tensor, utts: list[str | None]) -> torch.Tensor | None:
        """CTC of the encoder states against the transcripts of the clips that have one."""
        tok = self.adapter.tokenizer
        rows = [i for i, u in enumerate(utts) if isinstance(u, str) and u in self.transcripts]
        if not rows:
            return None
        targets = [tok.encode(self.transcripts[utts[i]], add_special_tokens=False) for i in rows]
        log_probs = self.ctc_head(hidden[rows]).float().log_softmax(-1).transpose(0, 1)  # [T, B, V]
        flat = torch.tensor([t for ids in targets for t in ids], dtype=torch.long, device=hidden.device)
        return torch.nn.functional.ctc_loss(
            log_probs, flat, lens[rows], torch.tensor([len(t) for t in targets], device=hidden.device),
            blank=tok.pad_token_id, zero_infinity=True)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        enc = self.adapter.audio_encoder
        hidden, conv, lens = enc.encode(batch["features"], batch["feature_lens"])
        loss = self.adapter.loss(batch, audio=enc.project(hidden, conv, lens))
        n = len(batch["ids"])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        if self.ctc_head is not None:
            ctc = self.ctc_loss(hidden, lens, batch.get("utts") or [])
            if ctc is not None:
                self.log("train/ctc", ctc, prog_bar=True, batch_size=n)
                loss = loss + self.hparams.ctc_weight * ctc
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("val/loss", self.adapter.loss(batch), batch_size=len(batch["ids"]))
        preds = self.adapter.generate(batch, max_new_tokens=self.hparams.max_new_tokens)
        self.evaluator.update(batch, preds, self.device, loader_suffix(self.trainer.datamodule, "val", dataloader_idx))

    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset()

    def on_validation_epoch_end(self) -> None:
        results = self.evaluator.compute("val")
        if results:
            self.log_dict(results, add_dataloader_idx=False)

    def configure_optimizers(self):
        hp = self.hparams
        named = list(self.adapter.named_parameters()) + list(
            self.ctc_head.named_parameters(prefix="ctc_head") if self.ctc_head is not None else [])
        decay = [p for n, p in named if p.dim() >= 2 and "embed" not in n]
        rest = [p for n, p in named if not (p.dim() >= 2 and "embed" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=hp.lr, betas=(0.9, 0.98))
        total = hp.total_steps or (int(self.trainer.max_steps) if self.trainer.max_steps > 0 else None)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, hp.warmup_steps, total, 0.0, hp.lr, hp.final_lr) / hp.lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.adapter.save(Path(self.hparams.out_dir))


def export_checkpoint(ckpt: str, out_dir: str) -> Path:
    """Write the TinyLALM checkpoint directory from a pretraining Lightning checkpoint.

    For a run that was stopped before ``on_fit_end`` wrote ``out_dir`` (the tokenizer is rebuilt
    from the same manifests, deterministically, so the manifests must be present).
    """
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hparams = {k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")}
    module = TinyLALMPretrain(**hparams)
    module.load_state_dict(state["state_dict"])
    module.adapter.save(Path(out_dir))
    return Path(out_dir)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ahamask_lightning.pretrain",
                                     description="export a TinyLALM checkpoint from a pretraining .ckpt")
    parser.add_argument("ckpt")
    parser.add_argument("out_dir")
    a = parser.parse_args()
    print(export_checkpoint(a.ckpt, a.out_dir))
