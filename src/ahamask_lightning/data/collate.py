"""The batch contract between the data layer and the model: :class:`SampleCollate`.

Who owns batching: the model knows how to turn audio + prompts into tensors (its adapter's
``collate``), the data layer runs that inside its workers. The model hands over a
:class:`SampleCollate` once (``AHAMaskModule.collate()``); the datamodule takes it as its
``collate_fn`` constructor argument. In the CLI the link is declared in
``AHAMaskCLI.add_arguments_to_parser`` (``model`` -> ``data.init_args.collate_fn`` when the
classes are instantiated); tools that build a datamodule themselves pass it explicitly. The
model never changes the datamodule (it only reads its evaluation sets' names through the trainer).

Batch schema (every adapter; the one place it is written down):

* In: a list of samples, one per cut of a Lhotse sampler's batch, decoded in a dataloader worker
  by :class:`~ahamask_lightning.data.dataset.AudioBatches`, each ``{"id", "task", "text",
  "audio" (float32 [T] at the adapter's rate), "instruction", "meta", "stage", "epoch"}``.
* Out, a dict with, from :class:`SampleCollate`: ``ids``, ``tasks``, ``texts`` (the targets
  trained on), ``instructions`` (the prompt text used, None when instruction-free),
  ``references`` (a sample's ``meta.references``, every reference text of it, or None) - lists
  of length B. From the adapter's ``collate(audios, instructions, targets)``, the text in one of two
  layouts, by how the model takes audio:

  - chat adapters (``ChatLALMAdapter``: Qwen2-Audio, Qwen2.5-Omni, Voxtral, Granite Speech, Audio
    Flamingo 3), the audio placeholder repeated once per audio token in the ids:
    ``gen_input_ids`` / ``gen_attention_mask`` [B, P]: the prompt alone, left-padded (generation);
    with targets, ``input_ids`` / ``attention_mask`` / ``labels`` [B, L]: prompt + target + end
    token, right-padded; ``labels`` is -100 everywhere but on the target and end tokens;
  - splicing adapters (SALMONN, TinyLALM), the audio embeddings put between two text pieces in
    the forward pass: ``prefix_ids`` / ``prefix_lens`` and ``suffix_ids`` / ``suffix_lens`` (the
    prompt before and after the audio), with targets ``target_ids`` / ``target_lens`` (target +
    end token), each right-padded;

  then the audio tensors that adapter's encoder takes, under names it chooses (e.g.
  ``input_features`` + ``feature_attention_mask`` for Qwen2-Audio, ``features`` +
  ``feature_lens`` for the tiny LALM), and ``clip_keys`` and ``cached_audio`` (lists: content hashes,
  and the cached encoder outputs found or None) when it caches encoder output.

  Everything runs in the loader workers: CPU only, no model weights touched. Pretraining's
  ``PretrainCollate`` adds ``utts`` and ``segments``.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from ..prompts import choose_instruction

if TYPE_CHECKING:  # the workers need the adapter object, not the models package
    from ..models.base import LALMAdapter


class SampleCollate:
    """Turns dataset samples into model tensors plus the text fields metrics need (see module docstring).

    Random choices (an instruction variant for ``prompt: random``, dropping the instruction) are
    drawn per sample from ``(seed, epoch, sample id)``: the same in any worker, with any number
    of workers, after a resume, and new each epoch. Dropping applies to training samples only
    (``stage`` ``train``); validation and test keep their instructions.
    """

    def __init__(self, adapter: LALMAdapter, prompt: str, seed: int = 0,
                 instruction_free: dict[str, float] | None = None,
                 instruction_free_target: str | None = None) -> None:
        self.adapter, self.prompt, self.seed = adapter, prompt, seed
        # task -> probability of dropping the instruction (pretraining experiment only); with
        # instruction_free_target set, such examples are trained to answer that text instead
        # (e.g. "" = stay silent when not asked) rather than to do their task
        self.instruction_free = dict(instruction_free or {})
        self.instruction_free_target = instruction_free_target

    def _instruction(self, sample: dict) -> str | None:
        rng = random.Random(f"{self.seed}:{sample.get('epoch', 0)}:{sample['id']}")  # str seeds hash stably
        drop = self.instruction_free.get(sample["task"], 0.0) if sample.get("stage") == "train" else 0.0
        if rng.random() < drop:
            return None
        return choose_instruction(sample, self.prompt, rng)

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        instructions = [self._instruction(s) for s in samples]
        texts = [s["text"] if ins is not None or self.instruction_free_target is None
                 else self.instruction_free_target for s, ins in zip(samples, instructions)]
        batch = self.adapter.collate([s["audio"] for s in samples], instructions, texts)
        batch.update(ids=[s["id"] for s in samples], tasks=[s["task"] for s in samples],
                     texts=texts, instructions=instructions,
                     references=[(s.get("meta") or {}).get("references") for s in samples])
        return batch
