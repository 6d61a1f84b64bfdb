"""Pretraining of the TinyLALM testbed: every task taught from instructions (several phrasings).

This is the only place where LALM weights are trained. Whether some tasks also see
instruction-free examples (as real LALMs do for ASR in their first stage) is the
``instruction_free`` experiment knob, off by default.

An auxiliary CTC loss on the audio encoder (``ctc_weight``) teaches the encoder the words of a
clip, whatever task the clip is prompted with, so the LLM gets aligned, word-bearing audio tokens
early; without it 3000 CPU steps did not learn to transcribe (WER ~100 %). Only clips of one
utterance whose ``meta.utt`` has an ASR line in ``tokenizer_manifests`` get it (the recipes: the
training ``asr.jsonl``, so its utterances under every single-utterance task: asr, gr, src, gr_asr,
json); ASV pairs, sound scenes and utterances found only in other manifests (``asr_extra.jsonl``)
get no CTC. The CTC head is a training aid only and is not part of the saved checkpoint.

An auxiliary speaker loss (``speaker_weight``) classifies the speaker of every utterance from the
mean of its encoder states (both halves of a verification pair, split at the known boundary).
CTC alone pushes the encoder toward speaker-independent states, and speaker verification was
never learned without it (ASV at chance after 4000 steps). A pair loss (``pair_weight``) asks the
encoder, from the mean of all its states over a verification pair, whether the two halves share a
speaker, so the comparison is present in the audio tokens the LLM reads. These heads are not saved.
A second stage can start from a first stage's Lightning checkpoint (``init_from``).
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from .data.audio import PAIR_GAP_SECONDS
from .data.collate import SampleCollate
from .evaluation import TaskEvaluator, eval_set_of
from .models.tiny_lalm import PROMPT_TEMPLATE, TinyLALM, TinyLALMConfig, build_tokenizer
from .module import warmup_cosine


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


def utterance_labels(manifests: list[str]) -> tuple[dict[str, str], dict[str, int]]:
    """From the ASR lines: ``meta.utt`` -> transcript (CTC targets), ``meta.speaker`` -> class index."""
    transcripts, speakers = {}, set()
    for path in manifests:
        with open(path) as f:
            for line in f:
                if line.strip():
                    obj = json.loads(line)
                    meta = obj.get("meta") or {}
                    if obj.get("task") != "asr":
                        continue
                    if isinstance(meta.get("utt"), str):
                        transcripts[meta["utt"]] = obj["text"]
                    if isinstance(meta.get("speaker"), str):
                        speakers.add(meta["speaker"])
    return transcripts, {spk: i for i, spk in enumerate(sorted(speakers))}


def speaker_segments(meta: dict | None) -> list[tuple[str, float, float]]:
    """(speaker, start s, end s) of each utterance in a clip: one, or the two halves of a pair."""
    meta = meta or {}
    spk = meta.get("speaker")
    if isinstance(spk, str):
        return [(spk, 0.0, float("inf"))]
    durs = meta.get("durations")
    if isinstance(spk, list) and len(spk) == 2 and isinstance(durs, list) and len(durs) == 2:
        start_b = float(durs[0]) + PAIR_GAP_SECONDS
        return [(spk[0], 0.0, float(durs[0])), (spk[1], start_b, float("inf"))]
    return []


AUX_HEADS = ("ctc_head.", "speaker_head.", "pair_head.")

# Options of where a run writes and of how validation decodes, not of the model or of the training
# maths: left out of the checkpoint's hyperparameters, which LightningCLI applies over the command
# line when ``--ckpt_path`` is given (a resumed run given another ``out_dir`` would otherwise export
# into the first run's folder). As ``module.EVALUATION_OPTIONS`` for the mask module.
RUN_OPTIONS = ("out_dir", "max_new_tokens")


class PretrainCollate(SampleCollate):
    """SampleCollate plus each clip's utterance id (for the CTC transcript of any speech task)."""

    def __call__(self, samples: list[dict]) -> dict:
        batch = super().__call__(samples)
        batch["utts"] = [(s.get("meta") or {}).get("utt") for s in samples]
        batch["segments"] = [speaker_segments(s.get("meta")) for s in samples]
        return batch


GROW_LAYERS = ("identity", "stack")
_LAYER_KEY = re.compile(r"^llm\.model\.layers\.\d+\.")


def stacked_layers(old: int, new: int) -> list[int]:
    """Depth up-scaling: for each of ``new`` layers, the old layer it copies (first half from the
    bottom, second half from the top, so the two copies overlap in the middle)."""
    if new < old:
        raise ValueError(f"grow_layers=stack: {new} layers cannot come from {old}")
    first = (new + 1) // 2
    if first > old:
        raise ValueError(f"grow_layers=stack: {new} layers need at most {2 * old} (two copies of {old})")
    return list(range(first)) + list(range(old - (new - first), old))


def restack(state: dict[str, torch.Tensor], sources: list[int]) -> dict[str, torch.Tensor]:
    """The small model's state with its decoder layers copied to the new positions ``sources``."""
    out = {k: v for k, v in state.items() if not _LAYER_KEY.match(k)}
    for new, old in enumerate(sources):
        prefix = f"llm.model.layers.{old}."
        out.update({f"llm.model.layers.{new}." + k[len(prefix):]: v.clone()
                    for k, v in state.items() if k.startswith(prefix)})
    return out


class TinyLALMPretrain(L.LightningModule):
    """Train a TinyLALM from scratch on instruction + audio -> target pairs.

    Args:
        tokenizer_manifests: manifests whose targets train the BPE tokenizer (the train split); their
            ASR lines also give the CTC transcripts and the speaker classes.
        out_dir: where the checkpoint directory (config, fp16 safetensors, tokenizer) is written.
            Not stored in the Lightning checkpoint (``RUN_OPTIONS``): a resumed run takes it from
            its own command line.
        config: overrides of ``TinyLALMConfig`` fields.
        instruction_free: task -> probability of dropping the instruction (experiment; default none).
        instruction_free_target: what the examples without instruction are trained to answer:
            None (default) = their own task's target, so that task becomes the instruction-free
            default; a text such as "" = that text for every task (silence: no task by default).
        max_new_tokens: longest validation answer; not stored in the checkpoint either.
        ctc_weight: weight of the encoder's auxiliary CTC loss on the clip's transcript (0: off);
            only clips whose utterance has an ASR line in ``tokenizer_manifests`` have one.
        speaker_weight: weight of the encoder's auxiliary speaker-classification loss (0: off).
        pair_weight: weight of the encoder's auxiliary same-speaker loss on verification pairs (0: off).
        init_from: a pretraining Lightning checkpoint whose weights this run starts from (the
            optimizer and schedule start afresh; heads it lacks start random, heads this run
            does not use are dropped), or an exported TinyLALM checkpoint directory (the model
            only: its tokenizer and config must be this run's).
        grow_from: an exported TinyLALM checkpoint directory of a SMALLER LLM (fewer layers or
            heads, same hidden size, encoder and tokenizer) to start from: every tensor whose name
            and shape match is copied (with more heads of the same width, a layer's old head reads
            as several narrower ones), and the added layers start as identities (zero output
            projections), so training re-learns attention rather than everything.
        grow_layers: how ``grow_from`` fills a deeper LLM: ``identity`` (added layers on top with
            zero output projections: the model computes what the small one did, but nothing
            forces the new layers to do anything, and they stay nearly inert) or ``stack``
            (depth up-scaling: the first half of the new layers copies the small model's first
            layers, the second half its last ones, e.g. 8 -> 12 is 0-5 then 2-7; every layer
            works from the start, at the cost of a changed function that training repairs).
        freeze_encoder: keep the audio encoder (convolutions and transformer, not the projector)
            fixed, e.g. when it comes trained from ``grow_from``.
    """

    def __init__(self, tokenizer_manifests: list[str], out_dir: str = "checkpoints/tiny_lalm",
                 vocab_size: int = 1000, config: dict | None = None, lr: float = 2e-3, warmup_steps: int = 300,
                 final_lr: float = 2e-5, weight_decay: float = 0.01, total_steps: int | None = None,
                 instruction_free: dict[str, float] | None = None, instruction_free_target: str | None = None,
                 max_new_tokens: int = 40, seed: int = 0,
                 ctc_weight: float = 0.0, speaker_weight: float = 0.0, pair_weight: float = 0.0,
                 init_from: str | None = None, grow_from: str | None = None,
                 grow_layers: str = "identity", freeze_encoder: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(RUN_OPTIONS))
        self.out_dir, self.max_new_tokens = out_dir, max_new_tokens
        torch.manual_seed(seed)
        tokenizer = build_tokenizer(corpus_texts(tokenizer_manifests), vocab_size=vocab_size)
        cfg = TinyLALMConfig(**(config or {}))
        cfg.vocab_size = len(tokenizer)
        self.adapter = TinyLALM(checkpoint=None, config=cfg, tokenizer=tokenizer)
        self.evaluator = TaskEvaluator()
        self.transcripts, self.speakers = utterance_labels(tokenizer_manifests)
        # blank = the pad token, which is never a target
        self.ctc_head = torch.nn.Linear(cfg.enc_dim, len(tokenizer)) if ctc_weight > 0 else None
        self.speaker_head = (torch.nn.Linear(cfg.enc_dim, len(self.speakers))
                             if speaker_weight > 0 and self.speakers else None)
        self.pair_head = torch.nn.Linear(cfg.enc_dim, 2) if pair_weight > 0 else None
        # encoder frames per second: the two stride-2 convolutions after the log-mel hop
        self.enc_fps = 1000.0 / (cfg.hop_ms * 4)
        if init_from and grow_from:
            raise ValueError("init_from and grow_from: give one starting point, not both")
        if grow_layers not in GROW_LAYERS:  # checked before any weights are read
            raise ValueError(f"grow_layers: expected one of {GROW_LAYERS}, got {grow_layers!r}")
        if init_from:
            self._load_weights(init_from)
        if grow_from:
            self._grow(Path(grow_from), grow_layers)
        if freeze_encoder:
            enc = self.adapter.audio_encoder
            for part in (enc.conv, enc.encoder, enc.norm):
                part.requires_grad_(False)

    def _load_weights(self, path: str) -> None:
        if Path(path).is_dir():  # an exported TinyLALM checkpoint: the model only, no training heads
            self._load_exported(Path(path))
            return
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        mine = self.state_dict()
        # a later stage may switch an auxiliary loss off: its trained head is then left behind
        state = {k: v for k, v in state.items() if k in mine or not k.startswith(AUX_HEADS)}
        unknown = sorted(k for k in state if k not in mine)
        if unknown:
            raise ValueError(f"{path}: keys this TinyLALMPretrain does not have, e.g. {unknown[:3]}")
        bad = [k for k in state if state[k].shape != mine[k].shape]
        if bad:
            raise ValueError(f"{path}: shape mismatch for {bad[:3]} (was the config or tokenizer changed?)")
        self.load_state_dict(state, strict=False)

    def _exported_with_my_tokenizer(self, path: Path) -> TinyLALM:
        exported = TinyLALM(checkpoint=str(path))
        if exported.tokenizer.get_vocab() != self.adapter.tokenizer.get_vocab():
            raise ValueError(f"{path}/tokenizer.json: differs from the tokenizer built from tokenizer_manifests "
                             "(was the corpus synthesised with another seed or size?)")
        return exported

    def _load_exported(self, path: Path) -> None:
        exported = self._exported_with_my_tokenizer(path)
        if asdict(exported.config) != asdict(self.adapter.config):
            raise ValueError(f"{path}/config.json: differs from this run's config")
        self.adapter.load_state_dict(exported.state_dict())

    def _grow(self, path: Path, layers: str = "identity") -> None:
        small = self._exported_with_my_tokenizer(path)
        mine = self.adapter.state_dict()
        theirs = small.state_dict()
        # the parts that must carry over whole: without them this is training from scratch
        needed = [k for k in mine if k.startswith(("audio_encoder.", "llm.model.embed_tokens."))]
        bad = [k for k in needed if k not in theirs or theirs[k].shape != mine[k].shape]
        if bad:
            raise ValueError(f"{path}/config.json: grow_from needs the same encoder and LLM hidden size; "
                             f"{bad[0]} differs")
        old_layers = small.config.llm["num_hidden_layers"]
        if layers == "stack":
            theirs = restack(theirs, stacked_layers(old_layers, len(self.adapter.llm.model.layers)))
        copied = {k: v for k, v in theirs.items() if k in mine and v.shape == mine[k].shape}
        self.adapter.load_state_dict(copied, strict=False)
        if layers == "identity":
            for layer in self.adapter.llm.model.layers[old_layers:]:
                torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
                torch.nn.init.zeros_(layer.mlp.down_proj.weight)
        self.grown = {"copied": len(copied), "new": len([k for k in mine if k not in copied])}

    def collate(self) -> PretrainCollate:
        """The batch builder the datamodule runs in its workers (its ``collate_fn``; the CLI links it)."""
        return PretrainCollate(self.adapter, "random", self.hparams.seed, self.hparams.instruction_free,
                               self.hparams.instruction_free_target)

    def train(self, mode: bool = True) -> TinyLALMPretrain:  # the adapter pins itself to eval mode; pretraining needs train mode
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

    def speaker_loss(self, hidden: torch.Tensor, lens: torch.Tensor,
                     segments: list[list[tuple[str, float, float]]]) -> torch.Tensor | None:
        """Cross-entropy of each utterance's speaker from its mean encoder state."""
        pooled, labels = [], []
        for i, segs in enumerate(segments):
            for spk, start, end in segs:
                lo = int(start * self.enc_fps)
                hi = int(lens[i]) if end == float("inf") else min(int(lens[i]), int(end * self.enc_fps))
                if spk in self.speakers and hi > lo:
                    pooled.append(hidden[i, lo:hi].mean(0))
                    labels.append(self.speakers[spk])
        if not pooled:
            return None
        logits = self.speaker_head(torch.stack(pooled)).float()
        return torch.nn.functional.cross_entropy(logits, torch.tensor(labels, device=hidden.device))

    def pair_loss(self, hidden: torch.Tensor, lens: torch.Tensor,
                  segments: list[list[tuple[str, float, float]]]) -> torch.Tensor | None:
        """Cross-entropy of same/different speaker from the mean encoder state of each pair clip."""
        rows = [i for i, segs in enumerate(segments) if len(segs) == 2]
        if not rows:
            return None
        pooled = torch.stack([hidden[i, : int(lens[i])].mean(0) for i in rows])
        same = torch.tensor([int(segments[i][0][0] == segments[i][1][0]) for i in rows], device=hidden.device)
        return torch.nn.functional.cross_entropy(self.pair_head(pooled).float(), same)

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
        if self.speaker_head is not None:
            spk = self.speaker_loss(hidden, lens, batch.get("segments") or [])
            if spk is not None:
                self.log("train/speaker", spk, prog_bar=True, batch_size=n)
                loss = loss + self.hparams.speaker_weight * spk
        if self.pair_head is not None:
            pair = self.pair_loss(hidden, lens, batch.get("segments") or [])
            if pair is not None:
                self.log("train/pair", pair, prog_bar=True, batch_size=n)
                loss = loss + self.hparams.pair_weight * pair
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("val/loss", self.adapter.loss(batch), batch_size=len(batch["ids"]))
        preds = self.adapter.generate(batch, max_new_tokens=self.max_new_tokens)
        self.evaluator.update(batch, preds, self.device, eval_set_of(self.trainer.datamodule, "val", dataloader_idx))

    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset()

    def on_validation_epoch_end(self) -> None:
        results = self.evaluator.compute("val", self.device)
        if results:
            self.log_dict(results, add_dataloader_idx=False)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        named = [(n, p) for n, p in self.adapter.named_parameters() if p.requires_grad]
        for prefix in ("ctc_head", "speaker_head", "pair_head"):
            head = getattr(self, prefix)
            if head is not None:
                named += list(head.named_parameters(prefix=prefix))
        decay = [p for n, p in named if p.dim() >= 2 and "embed" not in n]
        rest = [p for n, p in named if not (p.dim() >= 2 and "embed" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=hp.lr, betas=(0.9, 0.98))
        total = hp.total_steps or (int(self.trainer.max_steps) if self.trainer.max_steps > 0 else None)
        sched = warmup_cosine(opt, hp.warmup_steps, total, 0.0, hp.lr, hp.final_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        try:
            fitting = self.trainer.state.fn == TrainerFn.FITTING
        except RuntimeError:  # not attached to a Trainer
            fitting = False
        if fitting and self.global_rank == 0 and "out_dir" in (checkpoint.get("hyper_parameters") or {}):
            # written before RUN_OPTIONS were left out: LightningCLI has applied its out_dir
            print(f"ahamask: this checkpoint stores out_dir (it predates RUN_OPTIONS), which `ahamask fit "
                  f"--ckpt_path` applies over --model.init_args.out_dir: this run exports to {self.out_dir} "
                  "(python -m ahamask_lightning.pretrain CKPT DIR exports elsewhere)", file=sys.stderr)

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.adapter.save(Path(self.out_dir))


def export_checkpoint(ckpt: str, out_dir: str) -> Path:
    """Write the TinyLALM checkpoint directory from a pretraining Lightning checkpoint.

    For a run that was stopped before ``on_fit_end`` wrote ``out_dir`` (the tokenizer is rebuilt
    from the same manifests, deterministically, so the manifests must be present). A missing file
    raises ``FileNotFoundError``, anything else that is not a ``TinyLALMPretrain`` checkpoint a
    ``ValueError``, each naming ``ckpt`` in one line.
    """
    from .cli.run_files import checkpoint_problem

    if Path(ckpt).is_dir():
        raise ValueError(f"{ckpt}: a folder; expected the .ckpt file of a pretraining run")
    problem = checkpoint_problem(Path(ckpt))
    if problem is not None:
        kind, why = problem
        raise (FileNotFoundError if kind == "missing" else ValueError)(f"{ckpt}: {why}")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    stored = state.get("hyper_parameters") if isinstance(state, dict) else None
    if not isinstance(stored, dict) or "tokenizer_manifests" not in stored or "state_dict" not in state:
        raise ValueError(f"{ckpt}: not a TinyLALM pretraining checkpoint (expected the .ckpt of an `ahamask fit` "
                         "of ahamask_lightning.pretrain.TinyLALMPretrain, with its hyper_parameters and state_dict)")
    hparams = {k: v for k, v in stored.items() if not k.startswith("_")}
    hparams["init_from"] = hparams["grow_from"] = None  # the weights come from ``ckpt`` itself
    module = TinyLALMPretrain(**hparams)
    module.load_state_dict(state["state_dict"])
    module.adapter.save(Path(out_dir))
    return Path(out_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m ahamask_lightning.pretrain CKPT OUT_DIR``; bad input is one ``ahamask: error:`` line, exit 2."""
    import argparse

    from .cli.errors import ONE_LINE_ERRORS, error_line, full_traceback_wanted

    parser = argparse.ArgumentParser(prog="python -m ahamask_lightning.pretrain",
                                     description="export a TinyLALM checkpoint from a pretraining .ckpt")
    parser.add_argument("ckpt")
    parser.add_argument("out_dir")
    a = parser.parse_args(argv)
    try:
        print(export_checkpoint(a.ckpt, a.out_dir))
    except ONE_LINE_ERRORS as exc:
        if full_traceback_wanted():
            raise
        print(f"ahamask: error: {error_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
