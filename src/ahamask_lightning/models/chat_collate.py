"""What the chat-prompted adapters share: prompt encoding, batch packing, loss, generation,
the audio-feature cache and activation checkpointing of the frozen LLM.

Every transformers LALM used here takes the same shape of input: token ids where the
audio placeholder token is repeated once per audio frame the encoder emits, plus the
encoder's input tensors. So the batch layout (generation prompts left-padded, training
prompt + target right-padded with labels on the target only) and the loss / generate calls
are the same for all of them; only the prompt text and the audio tensors differ.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from .base import (
    LALMAdapter,
    accepts_logits_to_keep,
    enable_llm_checkpointing,
    last_position_logits,
    llm_checkpointing_active,
    loss_on_target_logits,
    target_only_loss,
    target_positions,
)
from .feature_cache import FeatureCache, refuse_unsupported, weights_fingerprint

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

TINY_SECONDS = 4.0  # the tiny models' feature window: audio is cut there


def tiny_model(model_cls: type[PreTrainedModel], config: PretrainedConfig,
               attn_implementation: str) -> nn.Module:
    """A random model of a transformers class from a tiny config of that class, with the attention kernel set."""
    model = model_cls(config)
    model.set_attn_implementation(attn_implementation)
    return model


def pretrained_model(model_cls: type[PreTrainedModel], path: str, dtype: str, attn_implementation: str,
                     **kwargs: Any) -> nn.Module:
    """A real checkpoint from a local directory, in ``dtype`` (a torch dtype name) with the attention kernel set."""
    return model_cls.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation=attn_implementation,
                                     **kwargs)


def unpad(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """The unpadded rows of a padded batch (either padding side)."""
    return [input_ids[i, attention_mask[i].bool()] for i in range(input_ids.shape[0])]


def published_name(configs: dict[str, dict], text_config: PretrainedConfig, fallback: str) -> str:
    """The name of the published configuration whose LLM shape ``text_config`` has, else ``fallback``.

    A mask is tied to the model it was trained on; naming real checkpoints by their shape
    (not by whatever the local directory is called) keeps mask metadata comparable.
    """
    keys = ("num_hidden_layers", "num_attention_heads", "hidden_size")
    for name, cfg in configs.items():
        if all(cfg["text_config"].get(k) == getattr(text_config, k, None) for k in keys):
            return name
    return fallback


def encode_template(tokenizer: PreTrainedTokenizerBase, template: str, specials: Sequence[str], text: str,
                    audio_token: str, n_audio: int) -> list[int]:
    """Token ids of ``template`` with ``{text}`` filled in and ``audio_token`` repeated ``n_audio`` times.

    Special tokens are mapped to their ids one by one and only the plain text between them
    goes through the tokenizer. That is how tokenizers treat added tokens anyway, and it also
    works for tokenizers that do not parse special tokens out of text (Mistral's tekken).
    """
    pieces = re.split("(" + "|".join(re.escape(s) for s in [*specials, "{text}"]) + ")", template)
    ids: list[int] = []
    for piece in pieces:
        if not piece:
            continue
        if piece == "{text}":
            ids += tokenizer.encode(text, add_special_tokens=False) if text else []
        elif piece == audio_token:
            ids += [tokenizer.convert_tokens_to_ids(audio_token)] * n_audio
        elif piece in specials:
            ids.append(tokenizer.convert_tokens_to_ids(piece))
        else:
            ids += tokenizer.encode(piece, add_special_tokens=False)
    return ids


def pack_prompts(prompt_ids: Sequence[torch.Tensor | list[int]], targets: Sequence[str] | None,
                 encode: Callable[[str], list[int]], eos_id: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Generation inputs (``gen_input_ids``/``gen_attention_mask``, left-padded) and, with targets,
    training inputs (``input_ids``/``attention_mask``/``labels``, right-padded; labels are -100
    except on the target tokens and the closing ``eos_id``)."""
    prompts = [torch.as_tensor(p, dtype=torch.long) for p in prompt_ids]
    ones = [torch.ones_like(p) for p in prompts]
    batch = {"gen_input_ids": pad_sequence(prompts, batch_first=True, padding_value=pad_id, padding_side="left"),
             "gen_attention_mask": pad_sequence(ones, batch_first=True, padding_value=0, padding_side="left")}
    if targets is None:
        return batch
    seqs, labels = [], []
    for ids, tgt in zip(prompts, targets):
        t = torch.tensor(list(encode(tgt)) + [eos_id], dtype=torch.long)
        seqs.append(torch.cat([ids, t]))
        labels.append(torch.cat([torch.full_like(ids, -100), t]))
    ids_t = pad_sequence(seqs, batch_first=True, padding_value=pad_id)
    lab_t = pad_sequence(labels, batch_first=True, padding_value=-100)
    mask_t = pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True, padding_value=0)
    batch.update(input_ids=ids_t, attention_mask=mask_t, labels=lab_t)
    return batch


class ChatLALMAdapter(LALMAdapter):
    """Collate helpers, loss, generation and the two training-speed options for adapters whose batch is
    ``pack_prompts`` + audio tensors.

    A family subclass calls ``super().__init__(feature_cache=..., gradient_checkpointing=...)`` first
    (options are checked there, before any weights load), sets ``self.model`` (a transformers
    ``...ForConditionalGeneration``), ``self.tokenizer`` and ``self.feature_extractor``, and ends with
    ``self._finish(model_id, eos=...)``. It names the batch entries the model takes besides the text
    (``audio_keys``; those in ``float_keys`` are cast to the model dtype), writes ``collate`` with
    :meth:`pack`, and, for the feature cache, names its frozen encoder modules (``encoder_parts``, under
    ``self.model.model``) and gives :meth:`audio_features`.

    Args (every family):
        feature_cache: a directory where the frozen encoder + projector output of each clip is stored
            and read back in later epochs (``feature_cache.py``); None: no cache.
        gradient_checkpointing: recompute each LLM layer's activations in the backward pass instead of
            keeping them (less memory, one more LLM forward per step).
    """

    audio_keys: tuple[str, ...] = ("input_features",)
    float_keys: tuple[str, ...] = ("input_features",)
    encoder_parts: tuple[str, ...] = ("audio_tower", "multi_modal_projector")
    # why the family's encoder output cannot be cached per clip (None: it can)
    feature_cache_unsupported: ClassVar[str | None] = None
    default_generation: ClassVar[dict] = {"max_new_tokens": 64, "num_beams": 1, "do_sample": False}

    def __init__(self, feature_cache: str | None = None, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        refuse_unsupported(feature_cache, type(self).__name__, self.feature_cache_unsupported)
        self._feature_cache_dir = feature_cache
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.feature_cache: FeatureCache | None = None

    def _set_head_shape(self) -> None:
        text_cfg = self.model.config.get_text_config()
        self.num_heads = text_cfg.num_attention_heads
        self.head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // self.num_heads

    def _finish(self, model_id: str, eos: str) -> None:
        """What every family sets once ``self.model`` and ``self.tokenizer`` exist: the gated head shape,
        the model id masks record, the end-of-answer token and the padding id (eos when there is none),
        then the feature cache and activation checkpointing asked for in ``__init__``."""
        self._set_head_shape()
        self.model_id = model_id
        self.eos_id = self.tokenizer.convert_tokens_to_ids(eos)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else self.eos_id
        self.audio_token_id = self.model.config.audio_token_id
        if self._feature_cache_dir:
            self.feature_cache = FeatureCache(self._feature_cache_dir, self._cache_namespace())
        if self.gradient_checkpointing:
            enable_llm_checkpointing(self.model.get_decoder())

    def _cache_namespace(self) -> dict:
        """Everything besides the waveform that decides a clip's cached embeddings (``feature_cache.py``)."""
        encoder = nn.ModuleList([getattr(self.model.model, name) for name in self.encoder_parts])
        extractor = {k: v for k, v in self.feature_extractor.to_dict().items()
                     if isinstance(v, (str, int, float, bool, dict, type(None)))}
        return {"model_id": self.model_id, "adapter": type(self).__name__, "sample_rate": self.sample_rate,
                "feature_extractor": extractor, "dtype": str(self.model.dtype),
                "weights": weights_fingerprint(encoder)}

    def gated_attentions(self) -> Sequence[nn.Module]:
        # get_decoder() is the LLM backbone only: audio (and vision) encoders are never gated
        return [layer.self_attn for layer in self.model.get_decoder().layers]

    # --- data -------------------------------------------------------------------------
    def _encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def pack(self, prompt_ids: Sequence[torch.Tensor | list[int]], targets: Sequence[str] | None,
             waves: Sequence[np.ndarray], **audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch of ``collate``: ``pack_prompts`` of the prompt ids (placeholders expanded) and
        targets, the audio tensors, and with a feature cache ``clip_keys`` (content hashes) and
        ``cached_audio`` (the entries found), both computed here in the loader workers."""
        batch = pack_prompts(prompt_ids, targets, self._encode_text, self.eos_id, self.pad_id)
        batch.update(audio)
        if self.feature_cache is not None:
            batch.update(self.feature_cache.batch_fields(waves))
        return batch

    # --- audio ------------------------------------------------------------------------
    def _audio_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype = self.model.dtype
        return {k: batch[k].to(dtype) if k in self.float_keys else batch[k] for k in self.audio_keys}

    def audio_features(self, audio: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[audio tokens, hidden]``: the frozen encoder + projector output for the clips of ``audio``
        (the ``audio_keys`` tensors), in the order the model fills the placeholders. Default: the
        model's own ``get_audio_features`` (``pooler_output``); families whose output differs override."""
        return self.model.get_audio_features(**audio, return_dict=True).pooler_output

    def audio_embeddings(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each clip's audio embeddings ``[tokens_i, hidden]``, from the feature cache when there is one.
        A clip's share is the number of placeholders in its row of the ids (training or prompt-only)."""
        audio = self._audio_inputs(batch)
        ids = batch["input_ids"] if "input_ids" in batch else batch["gen_input_ids"]
        counts = (ids == self.audio_token_id).sum(-1).tolist()

        @torch.no_grad()
        def encode(idx: Sequence[int]) -> list[torch.Tensor]:
            idx = list(idx)
            flat = self.audio_features({k: v[idx] for k, v in audio.items()})
            wanted = [counts[i] for i in idx]
            if flat.shape[0] != sum(wanted):
                raise ValueError(f"batch has {sum(wanted)} audio tokens but the encoder gave {flat.shape[0]} "
                                 "frames (input_ids and the audio inputs disagree)")
            return list(torch.split(flat, wanted))

        if self.feature_cache is None or "clip_keys" not in batch:
            return encode(range(len(counts)))
        return self.feature_cache.features(batch["clip_keys"], encode, device=ids.device, dtype=self.model.dtype,
                                           found=batch.get("cached_audio"))

    def input_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings with the audio embeddings scattered into the placeholder positions, as the
        models' own forward does (placeholder ids embedded as id 0: some lie outside the LLM's vocabulary)."""
        ids = batch["input_ids"]
        slots = ids == self.audio_token_id
        embeds = self.model.get_input_embeddings()(ids.masked_fill(slots, 0))
        audio = torch.cat(self.audio_embeddings(batch)).to(embeds.device, embeds.dtype)
        return embeds.masked_scatter(slots.unsqueeze(-1).to(embeds.device), audio)

    def embeds_inputs(self, batch: dict[str, torch.Tensor], embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's inputs besides ``attention_mask`` when the audio is already in ``embeds``."""
        return {"inputs_embeds": embeds}

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The training forward's inputs: token ids + audio tensors (the model merges the audio itself),
        or, with the feature cache, the merged embeddings built from cached clips."""
        if self.feature_cache is None or "clip_keys" not in batch:
            return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                    **self._audio_inputs(batch)}
        return {"attention_mask": batch["attention_mask"],
                **self.embeds_inputs(batch, self.input_embeddings(batch))}

    # --- compute ----------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy with the vocabulary projection at the target positions only: through the
        model's own ``logits_to_keep`` (a 2-D bool mask) where ``forward`` takes it, else on the base
        model's hidden states with ``get_output_embeddings()`` (``target_only_loss``)."""
        labels = batch["labels"]
        inputs = self.model_inputs(batch)
        with llm_checkpointing_active(self.model.get_decoder(), self.gradient_checkpointing):
            if accepts_logits_to_keep(self.model):
                logits = self.model(**inputs, use_cache=False, logits_to_keep=target_positions(labels)).logits
                return loss_on_target_logits(logits, labels)
            hidden = self.model.model(**inputs, use_cache=False).last_hidden_state
        return target_only_loss(hidden, self.model.get_output_embeddings(), labels)

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], **generation: Any) -> list[str]:
        """Decoding with transformers' ``generate`` (``generation`` overrides, e.g. ``cache_implementation:
        static``); the prompt pass computes logits at its last position only: transformers does so via
        ``logits_to_keep`` where ``forward`` takes it, ``last_position_logits`` does it otherwise."""
        ids = batch["gen_input_ids"]
        trim = nullcontext() if accepts_logits_to_keep(self.model) else \
            last_position_logits(self.model.get_output_embeddings())
        with trim:
            out = self.model.generate(input_ids=ids, attention_mask=batch["gen_attention_mask"],
                                      pad_token_id=self.pad_id, eos_token_id=self.eos_id,
                                      **self._audio_inputs(batch), **{**self.default_generation, **generation})
        texts = self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        return [t.strip() for t in texts]
