"""SALMONN adapter on tiny random parts of the real classes, and the full-size structure on meta."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchaudio

from ahamask_lightning.masking import HeadGate, HeadMask, import_official
from ahamask_lightning.models.salmonn import SalmonnAdapter, beats_fbank, missing_paths, num_beats_tokens
from ahamask_lightning.models.salmonn.beats import (
    BEATS_ITER3_PLUS_CFG,
    BEATs,
    BEATsConfig,
    load_beats,
    relative_position_bucket,
)
from ahamask_lightning.models.salmonn.qformer import WINDOW, num_windows, split_windows

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference"  # shared/ beside the checkout
SR = 16000


@pytest.fixture(scope="module")
def tiny() -> SalmonnAdapter:
    torch.manual_seed(0)
    return SalmonnAdapter(variant="tiny")


def _wavs(*seconds: float) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [0.1 * torch.randn(int(s * SR), generator=g) for s in seconds]


def _tiny_beats() -> BEATs:
    torch.manual_seed(0)
    cfg = dict(BEATS_ITER3_PLUS_CFG, embed_dim=16, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
               encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, predictor_class=5)
    return BEATs(BEATsConfig.from_dict(cfg)).eval()


# --- adapter: collate, loss, gradients, generate ------------------------------------------------
def test_collate_loss_frozen_and_mask_gradients(tiny: SalmonnAdapter) -> None:
    batch = tiny.collate(_wavs(1.5, 3.0), [None, "describe the audio"], ["hello world", "male"])
    assert batch["input_features"].shape == (2, 80, 3000)  # Whisper input always padded to 30 s
    assert batch["raw_wav"].shape == (2, 3 * SR) and batch["padding_mask"][0, int(1.5 * SR):].all()
    # the no-instruction prompt keeps the space before "\nASSISTANT:"
    suffix0 = tiny.tokenizer.decode(batch["suffix_ids"][0, : batch["suffix_lens"][0]])
    assert suffix0.endswith("ASSISTANT:") and batch["suffix_lens"][0] < batch["suffix_lens"][1]
    assert batch["target_ids"][0, batch["target_lens"][0] - 1] == tiny.tokenizer.eos_token_id
    assert tiny.encode_audio(batch).shape == (2, 88, tiny.llm.config.hidden_size)

    loss = tiny.loss(batch)
    assert torch.isfinite(loss) and not loss.requires_grad  # every weight frozen: nothing to train
    assert not any(p.requires_grad for p in tiny.parameters())

    mask = HeadMask(tiny.num_layers, tiny.num_heads).train()
    gate = HeadGate(tiny.gated_attentions(), tiny.num_heads, tiny.head_dim)
    try:
        with gate.apply(mask()):
            gated = tiny.loss(batch)
        gated.backward()
    finally:
        gate.remove()
    assert torch.isfinite(gated)
    assert mask.logits.grad is not None and mask.logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())


def test_speech_embeddings_depend_on_the_batch_so_the_cache_is_refused(tiny: SalmonnAdapter, tmp_path) -> None:
    """Why SALMONN takes no feature cache: a longer clip in the batch pads the waveform BEATs sees."""
    short, long_ = _wavs(2.0, 5.0)
    alone = tiny.encode_audio(tiny.collate([short], [None]))[0]
    batched = tiny.encode_audio(tiny.collate([short, long_], [None, None]))[0]
    assert alone.shape == batched.shape and (alone - batched).abs().max() > 1e-4
    with pytest.raises(ValueError, match="^feature_cache: not available for SalmonnAdapter: BEATs") as err:
        SalmonnAdapter(variant="tiny", feature_cache=str(tmp_path))
    assert "\n" not in str(err.value) and not any(tmp_path.iterdir())


def test_generate_returns_strings(tiny: SalmonnAdapter) -> None:
    batch = tiny.collate(_wavs(1.5, 3.0), [None, "describe the audio"])
    assert "target_ids" not in batch
    out = tiny.generate(batch, num_beams=2, max_new_tokens=3)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    assert tiny.default_generation["num_beams"] == 4 and tiny.default_generation["max_new_tokens"] == 200


def test_gate_sees_lora_adapted_attention(tiny: SalmonnAdapter) -> None:
    model = copy.deepcopy(tiny)
    torch.manual_seed(3)
    for name, p in model.llm.named_parameters():
        if "lora_" in name:
            p.data.normal_(0, 0.3)  # B starts at zero: make the adapters matter
    batch = model.collate(_wavs(1.0, 2.0), [None, "describe the audio"], ["hello", "yes"])
    embeds, attn, _ = model._inputs(batch)
    logits = lambda m: m.llm(inputs_embeds=embeds, attention_mask=attn).logits
    mask = (torch.rand(model.num_layers, model.num_heads, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    mask[0, 0], mask[0, 1] = 0.0, 1.0
    gate = HeadGate(model.gated_attentions(), model.num_heads, model.head_dim)
    with torch.no_grad(), gate.apply(mask):
        gated = logits(model)
    gate.remove()
    ref = copy.deepcopy(model)
    hd = ref.head_dim
    for i, attn_block in enumerate(ref.gated_attentions()):
        for j in range(ref.num_heads):
            if mask[i, j] == 0:
                attn_block.o_proj.weight.data[:, j * hd:(j + 1) * hd] = 0
    no_lora = copy.deepcopy(ref)
    for name, p in no_lora.llm.named_parameters():
        if "lora_B" in name:
            p.data.zero_()
    with torch.no_grad():
        expected, without = logits(ref), logits(no_lora)
    torch.testing.assert_close(gated, expected, atol=1e-5, rtol=1e-4)
    assert (expected - without).abs().max() > 1e-3  # the LoRA path really changes the output


# --- BEATs ---------------------------------------------------------------------------------------
def test_beats_fbank_matches_kaldi() -> None:
    wav = _wavs(1.3)[0]
    ref = torchaudio.compliance.kaldi.fbank(wav.unsqueeze(0) * 32768, num_mel_bins=128, sample_frequency=16000,
                                            frame_length=25, frame_shift=10)
    ref = (ref - 15.41663) / (2 * 6.55582)
    torch.testing.assert_close(beats_fbank(wav.unsqueeze(0))[0], ref)


def test_beats_features_stay_finite_under_a_float16_autocast() -> None:
    """SALMONN's YAMLs run 16-mixed: on CUDA the audio encoders run under a float16 autocast, whose
    matmul cannot hold the int16-scaled spectrum. CPU autocast casts mm to float16 as CUDA's does."""
    wav = _wavs(2.0)[0].unsqueeze(0)
    plain = beats_fbank(wav)
    beats = _tiny_beats()
    with torch.no_grad():
        expected = beats.extract_features(wav)
        with torch.autocast("cpu", dtype=torch.float16):
            fbank, features = beats_fbank(wav), beats.extract_features(wav)
    torch.testing.assert_close(fbank, plain)
    assert bool(torch.isfinite(features).all())
    torch.testing.assert_close(features.float(), expected, atol=0.05, rtol=0.05)


def test_beats_token_counts_real_patch_geometry() -> None:
    assert num_beats_tokens(30 * SR) == 1496 and num_beats_tokens(10 * SR) == 496
    beats = _tiny_beats()
    with torch.no_grad():
        for seconds, n in ((10, 496), (30, 1496)):
            out = beats.extract_features(torch.zeros(1, seconds * SR))
            assert out.shape == (1, n, 32)
        two = _wavs(1.5, 3.0)
        wav = torch.stack([F.pad(two[0], (0, 3 * SR - two[0].numel())), two[1]])
        pad = torch.arange(3 * SR)[None] >= torch.tensor([[two[0].numel()], [3 * SR]])
        out = beats.extract_features(wav, pad)
    assert out.shape == (2, 8 * ((1 + (3 * SR - 400) // 160) // 16), 32) and torch.isfinite(out).all()


def test_relative_position_buckets() -> None:
    def bucket(rel: int, num_buckets: int = 320, max_distance: int = 800) -> int:  # scalar T5 rule
        half = num_buckets // 2
        sign, d, exact = (half if rel > 0 else 0), abs(rel), half // 2
        if d < exact:
            return sign + d
        return sign + min(half - 1, exact + int(math.log(d / exact) / math.log(max_distance / exact) * (half - exact)))

    rel = torch.arange(-1600, 1601)
    got = relative_position_bucket(rel, 320, 800)
    assert got.tolist() == [bucket(int(r)) for r in rel]


def test_beats_checkpoint_keys_and_strict_load(tmp_path: Path) -> None:
    ref = json.loads((REF / "salmonn/beats_keys.json").read_text())
    with torch.device("meta"):
        full = BEATs(BEATsConfig.from_dict(ref["cfg"]))
    assert {k: tuple(v.shape) for k, v in full.state_dict().items()} == {
        e["key"]: tuple(e["shape"]) for e in ref["keys"]}
    small = _tiny_beats()
    torch.save({"cfg": small.cfg.__dict__, "model": small.state_dict(), "label_dict": {0: "/m/09x0r"}},
               tmp_path / "beats.pt")
    loaded = load_beats(tmp_path / "beats.pt")
    wav = _wavs(1.2)[0][None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.extract_features(wav), small.extract_features(wav))
    layers = loaded.encoder.layers
    assert layers[1].self_attn.relative_attention_bias is layers[0].self_attn.relative_attention_bias


# --- Q-Former windows ------------------------------------------------------------------------------
def test_window_pooling_88_tokens(tiny: SalmonnAdapter) -> None:
    assert WINDOW == 17 and num_windows(1500) == 88
    x = torch.randn(2, 1500, 6)
    official = F.unfold(x.transpose(1, 2).unsqueeze(2), kernel_size=(1, 17), stride=(1, 17))  # [B, C*17, L]
    official = official.view(2, 6, 17, -1).permute(0, 3, 2, 1).reshape(-1, 17, 6)
    torch.testing.assert_close(split_windows(x), official)
    conn = tiny.connector
    w = tiny.speech_encoder.config.d_model
    with torch.no_grad():
        for tokens in (1496, 496, 144):  # 30 s, 10 s, 3 s of BEATs tokens; Whisper always 1500 frames
            out = conn(torch.randn(1, 1500, w), torch.randn(1, tokens, tiny.beats.out_dim))
            assert out.shape == (1, 88, tiny.llm.config.hidden_size)
        fused = conn.fuse(torch.ones(1, 1500, 2), torch.ones(1, 496, 3))
    assert fused.shape == (1, 1500, 5) and fused[0, 496:, 2:].abs().sum() == 0


# --- full-size structure on meta -------------------------------------------------------------------
@pytest.mark.parametrize("variant,layers,heads", [("13b", 40, 40), ("7b", 32, 32)])
def test_full_size_heads_on_meta(variant: str, layers: int, heads: int) -> None:
    model = SalmonnAdapter.skeleton(variant)
    assert (model.num_layers, model.num_heads, model.head_dim) == (layers, heads, 128)
    whisper_ref = json.loads((REF / "salmonn/whisper_large_v2_encoder_keys.json").read_text())["keys"]
    assert {k: tuple(v.shape) for k, v in model.speech_encoder.state_dict().items()} == {
        e["key"]: tuple(e["shape"]) for e in whisper_ref}
    if variant == "13b":
        gate = HeadGate(model.gated_attentions(), model.num_heads, model.head_dim)
        released = import_official(REF / "official_masks/asr_librispeech.pth", 40, 40)
        gate.check(released.mask)
        assert released.active() == 1525
        gate.remove()


def test_missing_paths_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for env in ("WHISPER", "BEATS", "LLM", "CKPT"):
        monkeypatch.delenv(f"AHAMASK_SALMONN_{env}", raising=False)
    (tmp_path / "beats.pt").write_bytes(b"x")
    monkeypatch.setenv("AHAMASK_SALMONN_BEATS", str(tmp_path / "beats.pt"))
    problems = missing_paths(whisper_path="/nope/whisper", llm_path=str(tmp_path / "vicuna"))
    assert [p.split("=")[0].split(" ")[0] for p in problems] == ["whisper_path", "llm_path", "ckpt_path"]
    with pytest.raises(FileNotFoundError) as err:
        SalmonnAdapter(variant="13b", whisper_path="/nope/whisper", llm_path=str(tmp_path / "vicuna"))
    msg = str(err.value)
    assert msg.startswith("salmonn-13b: missing weights:") and "/nope/whisper" in msg and "ckpt_path" in msg
    assert "beats_path" not in msg and "AHAMASK_SALMONN_" in msg
    with pytest.raises(ValueError, match="variant"):
        SalmonnAdapter(variant="30b")


@pytest.mark.parametrize("num_beams", [1, 4])
def test_salmonn_decodes_pruned_like_the_gate(tmp_path, num_beams):
    """The paper's model: its LoRA on q/v pruned with the base weights, decoded greedily and with the
    released code's beam search (``beam_search: official``); the same text as the gated model."""
    from ahamask_lightning.analysis.masks import mask_to_logits, random_mask
    from ahamask_lightning.masking import save_mask
    from ahamask_lightning.module import AHAMaskModule

    torch.manual_seed(0)
    adapter = SalmonnAdapter(tiny=True, tiny_layers=2, tiny_heads=4, tiny_hidden=64)
    for i, block in enumerate(adapter.gated_attentions()):  # LoRA B starts at zero: make every factor count
        for p in block.parameters():
            p.data.normal_(0, 0.3, generator=torch.Generator().manual_seed(10 * i + p.numel()))
    save_mask(tmp_path / "m.safetensors", mask_to_logits(random_mask((2, 4), 3, seed=1)))
    generation = {"max_new_tokens": 8, "num_beams": num_beams}
    gated = AHAMaskModule(adapter, mask=str(tmp_path / "m.safetensors"), generation=generation)
    pruned = AHAMaskModule(copy.deepcopy(adapter), mask=str(tmp_path / "m.safetensors"), prune=True,
                           generation=generation)
    g = torch.Generator().manual_seed(5)
    batch = adapter.collate([0.1 * torch.randn(int(s * 16000), generator=g) for s in (1.0, 1.5)], [None, None])
    text = pruned._generate(batch)
    assert [b.q_proj.base_layer.out_features for b in pruned.pruned_eval.blocks] == [16, 2 * 16]
    assert [b.q_proj.lora_B.default.out_features for b in pruned.pruned_eval.blocks] == [16, 2 * 16]
    assert text == gated._generate(batch)
    assert text != AHAMaskModule(adapter, use_mask=False, generation=generation)._generate(batch)
