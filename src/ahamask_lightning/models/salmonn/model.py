"""SALMONN v1 (13B / 7B) as a LALMAdapter: Whisper + BEATs -> window Q-Former -> Vicuna with LoRA.

Parts: transformers' ``WhisperEncoder`` (80 mel, 30 s padded), BEATs (``beats.py``), the connector
(``qformer.py``), transformers' ``LlamaForCausalLM`` wrapped by peft LoRA (r 8, alpha 32, q/v).
The gate sits on each LLM layer's ``o_proj``, downstream of the LoRA-adapted q/v projections.
Paths come from the YAML (``model.init_args.model.init_args``) or ``AHAMASK_SALMONN_*``; the
``tiny`` variant builds every part with small random configurations of the same classes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ..base import (
    LALMAdapter,
    enable_llm_checkpointing,
    llm_checkpointing_active,
    loss_on_target_logits,
    target_positions,
)
from ..feature_cache import refuse_unsupported
from ..splice import splice_embeddings, tokenize_prompts
from .beats import BEATs, BEATsConfig, load_beats
from .checkpoint import load_salmonn_state, read_checkpoint
from .configs import LORA, PROMPT_TEMPLATE, SalmonnSpec, full_spec, tiny_spec, with_released_lora
from .generation import official_beam_search
from .qformer import SalmonnConnector
from .tokenizer import load_salmonn_tokenizer

ENV_VARS = {"whisper_path": "AHAMASK_SALMONN_WHISPER", "beats_path": "AHAMASK_SALMONN_BEATS",
            "llm_path": "AHAMASK_SALMONN_LLM", "ckpt_path": "AHAMASK_SALMONN_CKPT"}
RULES = ("official", "transformers")  # tokenizer / beam_search: the released code's, or transformers 5's
_IS_DIR = {"whisper_path": True, "beats_path": False, "llm_path": True, "ckpt_path": False}


def resolve_paths(**given: str | None) -> dict[str, str | None]:
    """Each path from the argument, else from its ``AHAMASK_SALMONN_*`` environment variable."""
    return {k: given.get(k) or os.environ.get(env) or None for k, env in ENV_VARS.items()}


def missing_paths(whisper_path: str | None = None, beats_path: str | None = None, llm_path: str | None = None,
                  ckpt_path: str | None = None) -> list[str]:
    """``name=path (why)`` for every weight location that is unset or absent (empty: all there)."""
    out = []
    for name, path in resolve_paths(whisper_path=whisper_path, beats_path=beats_path, llm_path=llm_path,
                                    ckpt_path=ckpt_path).items():
        if not path:
            out.append(f"{name} (not set; ${ENV_VARS[name]})")
        elif _IS_DIR[name] and not Path(path).is_dir():
            out.append(f"{name}={path} (not found: expected a Hugging Face model directory)")
        elif not _IS_DIR[name] and not Path(path).is_file():
            out.append(f"{name}={path} (not found)")
    return out


def _read_prefixed(directory: Path, prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    """The tensors under the first of ``prefixes`` present in an HF checkpoint directory
    (safetensors or .bin, sharded or not), with the prefix stripped."""
    from safetensors import safe_open

    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = directory / index_name
        files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
                 else [single] if (directory / single).is_file() else [])
        out: dict[str, torch.Tensor] = {}
        for name in files:
            if name.endswith(".safetensors"):
                with safe_open(str(directory / name), framework="pt") as f:
                    out.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(tuple(prefixes))})  # noqa: SIM118
            else:
                state = torch.load(directory / name, map_location="cpu", weights_only=True, mmap=True)
                out.update({k: v for k, v in state.items() if k.startswith(tuple(prefixes))})
        for prefix in prefixes if files else ():
            found = {k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix)}
            if found:
                return found
        if files:
            raise ValueError(f"{directory}: no tensors under {' or '.join(prefixes)}")
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin (sharded or not)")


def load_whisper_encoder(path: str | Path) -> WhisperEncoder:
    """Only the encoder of an HF Whisper directory (keys ``model.encoder.*``), in float32 like SALMONN."""
    cfg = WhisperConfig.from_pretrained(path)
    with torch.device("meta"):
        encoder = WhisperEncoder(cfg)
    # WhisperForConditionalGeneration (the hub's openai/whisper-*) saves model.encoder.*, WhisperModel encoder.*
    state = _read_prefixed(Path(path), ("model.encoder.", "encoder."))
    encoder.load_state_dict(state, strict=True, assign=True)
    return encoder.float().eval()


def prepare_waveform(audio: torch.Tensor | np.ndarray, sample_rate: int = 16000) -> torch.Tensor:
    """First channel, float32, zero-padded to >= 1 s and cut at 30 s (SALMONN's dataset rules)."""
    wav = torch.as_tensor(audio, dtype=torch.float32)
    if wav.dim() == 2:
        wav = wav[0]
    wav = wav[: 30 * sample_rate]
    if wav.shape[0] < sample_rate:
        wav = nn.functional.pad(wav, (0, sample_rate - wav.shape[0]))
    return wav


class SalmonnAdapter(LALMAdapter):
    """Args (YAML ``init_args``):
        variant: ``13b`` (Vicuna-13B v1.1, 40x40 heads), ``7b`` (Vicuna-7B v1.5, 32x32) or ``tiny``.
        whisper_path: HF ``openai/whisper-large-v2`` directory (or ``$AHAMASK_SALMONN_WHISPER``).
        beats_path: ``BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt`` (or ``$AHAMASK_SALMONN_BEATS``).
        llm_path: HF Vicuna directory (or ``$AHAMASK_SALMONN_LLM``).
        ckpt_path: ``salmonn_v1.pth`` (or ``$AHAMASK_SALMONN_CKPT``); for 7B the 7B release.
        dtype: LLM weight dtype; Whisper/BEATs/connector stay float32 and run under autocast on GPU.
        tiny: same as ``variant="tiny"``: small random parts, no files (tests, CPU runs).
        tokenizer: ``official`` (default): Vicuna's ``tokenizer.model`` through transformers 4.28's slow
            LlamaTokenizer rules, as the released code loads it (``tokenizer.py``); ``transformers``: the
            installed transformers' ``AutoTokenizer`` (tokenizers-backed: another ``▁`` count after
            spaces and special tokens, another byte-fallback decode). The tiny variant has its own.
        beam_search: ``official`` (default): beam search with transformers 4.28's length normalisation
            and stopping rule for embedding inputs, as the released evaluation decoded (``generation.py``);
            ``transformers``: the installed transformers' ``generate``. Greedy decoding is the same in both.
        feature_cache: refused (one line): BEATs runs on the batch's zero-padded waveforms, as in the
            released code, so a clip's speech embeddings depend on the longest clip of its batch and
            a per-clip cache would change them.
        gradient_checkpointing: recompute each Vicuna layer's activations in the backward pass instead
            of keeping them (less memory, one more LLM forward per step); the LoRA's dropout stays off.
    """

    feature_cache_unsupported = ("BEATs runs on the batch's zero-padded waveforms (as in the released code), so a "
                                 "clip's speech embeddings depend on the longest clip of its batch")

    default_generation = {"max_new_tokens": 200, "num_beams": 4, "do_sample": False, "min_length": 1,
                          "repetition_penalty": 1.0, "length_penalty": 1.0}

    def __init__(self, variant: str = "13b", whisper_path: str | None = None, beats_path: str | None = None,
                 llm_path: str | None = None, ckpt_path: str | None = None, dtype: str = "float16",
                 tiny: bool = False, attn_implementation: str = "sdpa", tiny_layers: int = 2, tiny_heads: int = 4,
                 tiny_hidden: int = 64, tokenizer: str = "official", beam_search: str = "official",
                 feature_cache: str | None = None, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        refuse_unsupported(feature_cache, type(self).__name__, self.feature_cache_unsupported)
        for name, value in (("tokenizer", tokenizer), ("beam_search", beam_search)):
            if value not in RULES:
                raise ValueError(f"SalmonnAdapter.{name}: expected one of {RULES}, got {value!r}")
        self.tokenizer_rule, self.beam_search = tokenizer, beam_search
        variant = "tiny" if tiny else variant
        if variant == "tiny":
            self._build_tiny(tiny_layers, tiny_heads, tiny_hidden, attn_implementation)
        else:
            spec = full_spec(variant)  # validates the variant before touching files
            missing = missing_paths(whisper_path, beats_path, llm_path, ckpt_path)
            if missing:
                raise FileNotFoundError(
                    f"salmonn-{variant}: missing weights: {', '.join(missing)}; set them in the YAML under "
                    "model.init_args.model.init_args or via AHAMASK_SALMONN_{WHISPER,BEATS,LLM,CKPT}")
            paths = resolve_paths(whisper_path=whisper_path, beats_path=beats_path, llm_path=llm_path,
                                  ckpt_path=ckpt_path)
            self._build_real(variant, spec, paths, getattr(torch, dtype), attn_implementation)
        self._set_checkpointing(gradient_checkpointing)
        self.freeze()

    def _set_checkpointing(self, on: bool) -> None:
        self.gradient_checkpointing = bool(on)
        if self.gradient_checkpointing:
            enable_llm_checkpointing(self.llm.model)

    # --- construction ------------------------------------------------------------------
    def _assemble(self, spec: SalmonnSpec, speech_encoder: nn.Module, beats: BEATs, llm: LlamaForCausalLM) -> None:
        self.speech_encoder = speech_encoder
        self.beats = beats
        self.connector = SalmonnConnector(speech_encoder.config.d_model, beats.out_dim, llm.config.hidden_size,
                                          **spec.qformer)
        self.llama_model = with_released_lora(llm)
        cfg = llm.config
        self.num_heads = cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def _build_tiny(self, layers: int, heads: int, hidden: int, attn_implementation: str) -> None:
        from ..tiny_lalm import build_tokenizer

        texts = ["the quick brown fox jumps over the lazy dog", "male female yes no", PROMPT_TEMPLATE,
                 "recognize the speech and give me the transcription", "describe the audio"]
        self.tokenizer = build_tokenizer(texts, vocab_size=200, special_tokens=["<Speech>", "</Speech>"])
        spec = tiny_spec(len(self.tokenizer), layers, heads, hidden)
        tok = self.tokenizer
        llm_cfg = LlamaConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id, attn_implementation=attn_implementation, **spec.llm)
        whisper = WhisperEncoder(WhisperConfig(**spec.whisper))
        self._assemble(spec, whisper, BEATs(BEATsConfig.from_dict(spec.beats)), LlamaForCausalLM(llm_cfg))
        self.feature_extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=self.sample_rate)
        self.model_id = "salmonn-tiny"

    def _build_real(self, variant: str, spec: SalmonnSpec, paths: dict, dtype: torch.dtype,
                    attn_implementation: str) -> None:
        from transformers import AutoTokenizer

        try:
            if self.tokenizer_rule == "official":
                if not (Path(paths["llm_path"]) / "tokenizer.model").is_file():
                    raise FileNotFoundError("no tokenizer.model (the sentencepiece model the official code "
                                            "loads); tokenizer: transformers takes tokenizer.json instead")
                tok = load_salmonn_tokenizer(paths["llm_path"])  # adds [PAD] (id 32000), right padding
            else:
                tok = AutoTokenizer.from_pretrained(paths["llm_path"])
                tok.add_special_tokens({"pad_token": "[PAD]"})  # id 32000, as the official model does
                tok.padding_side = "right"
        except (ImportError, OSError, ValueError, TypeError) as err:
            raise RuntimeError(f"{paths['llm_path']}: cannot load the Vicuna tokenizer ({err}); tokenizer: official "
                               "needs its tokenizer.model and the sentencepiece package") from err
        self.tokenizer = tok
        llm = LlamaForCausalLM.from_pretrained(paths["llm_path"], dtype=dtype, attn_implementation=attn_implementation)
        if llm.get_input_embeddings().num_embeddings < len(tok):
            llm.resize_token_embeddings(len(tok))
        self._assemble(spec, load_whisper_encoder(paths["whisper_path"]), load_beats(paths["beats_path"]), llm)
        whisper_dir = Path(paths["whisper_path"])
        self.feature_extractor = (WhisperFeatureExtractor.from_pretrained(whisper_dir)
                                  if (whisper_dir / "preprocessor_config.json").is_file()
                                  else WhisperFeatureExtractor(feature_size=80, sampling_rate=self.sample_rate))
        load_salmonn_state(self, read_checkpoint(paths["ckpt_path"]), strict=True)
        self.model_id = f"salmonn-{variant}"

    @classmethod
    def skeleton(cls, variant: str = "13b", device: str | torch.device = "meta",
                 gradient_checkpointing: bool = False) -> SalmonnAdapter:
        """The full-size module structure, no files and no tokenizer: on the meta device (the default)
        it takes no memory; on a real device it holds random weights (benchmarks)."""
        spec = full_spec(variant)
        self = cls.__new__(cls)
        LALMAdapter.__init__(self)
        with torch.device(device):
            self._assemble(spec, WhisperEncoder(WhisperConfig(**spec.whisper)),
                           BEATs(BEATsConfig.from_dict(spec.beats)), LlamaForCausalLM(LlamaConfig(**spec.llm)))
        self.tokenizer = None
        self.tokenizer_rule = self.beam_search = None  # no tokenizer: nothing to decode with
        self.model_id = f"salmonn-{variant}"
        self._set_checkpointing(gradient_checkpointing)
        return self.freeze()

    # --- adapter interface ---------------------------------------------------------------
    @property
    def llm(self) -> LlamaForCausalLM:
        """The LoRA-injected LlamaForCausalLM inside the peft wrapper."""
        return self.llama_model.base_model.model

    @property
    def llm_dtype(self) -> torch.dtype:
        """Read from the weights, so that a later ``.to(dtype)`` of the LLM is followed."""
        return self.llm.get_input_embeddings().weight.dtype

    def gated_attentions(self) -> Sequence[nn.Module]:
        return [layer.self_attn for layer in self.llm.model.layers]

    def collate(self, audios: Sequence[torch.Tensor], instructions: Sequence[str | None],
                targets: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        wavs = [prepare_waveform(a, self.sample_rate) for a in audios]
        feats = self.feature_extractor([w.numpy() for w in wavs], sampling_rate=self.sample_rate,
                                       return_tensors="pt")["input_features"]  # [B, 80, 3000]
        lens = torch.tensor([w.shape[0] for w in wavs])
        raw = nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        batch = {"input_features": feats, "raw_wav": raw,
                 "padding_mask": torch.arange(raw.shape[1])[None] >= lens[:, None]}
        tok = self.tokenizer
        batch.update(tokenize_prompts(tok, PROMPT_TEMPLATE, list(instructions), targets, tok.bos_token_id,
                                      tok.eos_token_id, tok.pad_token_id))
        return batch

    @torch.no_grad()
    def encode_audio(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, 88, hidden] speech embeddings in the LLM dtype (frozen path: no autograd)."""
        feats = batch["input_features"]
        dev = feats.device
        half = self.llm_dtype in (torch.float16, torch.bfloat16)
        padding = batch.get("padding_mask")
        padding = padding if padding is not None and bool(padding.any()) else None
        with torch.autocast(dev.type, dtype=self.llm_dtype, enabled=dev.type == "cuda" and half):
            speech = self.speech_encoder(feats.to(self.speech_encoder.conv1.weight.dtype)).last_hidden_state
            audio = self.beats.extract_features(batch["raw_wav"], padding)
            embeds = self.connector(speech, audio)
        return embeds.to(self.llm_dtype)

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return splice_embeddings(self.llm.get_input_embeddings(), batch, self.encode_audio(batch))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        embeds, mask, labels = self._inputs(batch)
        # logits only where a target is predicted (LlamaForCausalLM's logits_to_keep, 2-D bool mask)
        with llm_checkpointing_active(self.llm.model, self.gradient_checkpointing):
            out = self.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False,
                           logits_to_keep=target_positions(labels))
        return loss_on_target_logits(out.logits, labels)

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], **generation: Any) -> list[str]:
        embeds, mask, _ = self._inputs({k: v for k, v in batch.items() if not k.startswith("target_")})
        tok = self.tokenizer
        settings = {**self.default_generation, **generation}
        ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id}
        if self.beam_search == "official" and settings.get("num_beams", 1) > 1:
            out = official_beam_search(self.llm, embeds, mask, **ids, **settings)
        else:
            out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **ids, **settings)
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "lora": dict(LORA), "prompt_template": PROMPT_TEMPLATE,
                "tokenizer": self.tokenizer_rule, "beam_search": self.beam_search}
