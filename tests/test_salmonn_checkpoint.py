"""salmonn_v1.pth: every released key maps or is ignored with a reason; strict load and check-checkpoint."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from ahamask_lightning.models.salmonn import SalmonnAdapter, check_checkpoint, cli, load_salmonn_state
from ahamask_lightning.models.salmonn.checkpoint import (
    expected_keys,
    ignore_reason,
    is_trained_part,
    map_key,
    read_checkpoint,
    released_key,
)

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "salmonn"  # shared/ beside the checkout


def _ref_keys(variant: str) -> dict[str, tuple[list[int], str]]:
    entries = json.loads((REF / f"salmonn_{variant}_ckpt_keys.json").read_text())["keys"]
    return {e["key"]: (e["shape"], e["dtype"]) for e in entries}


def _synthetic(variant: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: (torch.arange(shape[-1]).expand(*shape).clone() if dtype == "int64"
                else torch.randn(*shape, generator=g)) for k, (shape, dtype) in _ref_keys(variant).items()}


@pytest.fixture(scope="module")
def ckpt_13b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every released 13B key with its shape, random fp32 values (~133 MB), in the runner's layout."""
    path = tmp_path_factory.mktemp("salmonn") / "salmonn_v1.pth"
    torch.save({"model": _synthetic("13b"), "epoch": 0}, path)
    return path


@pytest.mark.parametrize("variant", ["13b", "7b"])
def test_every_released_key_lands_or_is_ignored(variant: str) -> None:
    ref = _ref_keys(variant)
    skeleton = SalmonnAdapter.skeleton(variant)
    expected = expected_keys(skeleton)
    assert {k: list(v) for k, v in expected.items()} == {k: s for k, (s, _) in ref.items()}
    params = dict(skeleton.named_parameters())
    for key in ref:
        target = map_key(key)
        assert (target in params) != (ignore_reason(key) is not None), key
        if target is not None:
            assert released_key(target) == key
    trained = [n for n in params if is_trained_part(n)]
    assert sorted(map_key(k) for k in ref if map_key(k)) == sorted(trained)
    assert len(trained) == json.loads((REF / f"salmonn_{variant}_ckpt_keys.json").read_text())[
        "num_trainable_parameter_keys"]


def test_synthetic_13b_checkpoint_loads_strictly_on_meta_structure(ckpt_13b: Path) -> None:
    model = SalmonnAdapter.skeleton("13b")
    state = read_checkpoint(ckpt_13b)
    report = load_salmonn_state(model, state, strict=True)
    assert not report.problems and len(report.loaded) == 221 and len(report.ignored) == 52
    assert all(reason for reason in report.ignored.values())
    params = dict(model.named_parameters())
    for name in report.loaded:  # the trained parts are real tensors holding the released values
        assert not params[name].is_meta and not params[name].requires_grad
    torch.testing.assert_close(params["connector.speech_qformer.encoder.layer.1.crossattention.attention.key.weight"],
                               state["speech_Qformer.bert.encoder.layer.1.crossattention.self.key.weight"])
    lora = "llama_model.base_model.model.model.layers.39.self_attn.v_proj.lora_B.default.weight"
    torch.testing.assert_close(params[lora], state[lora])
    assert params["llama_model.base_model.model.model.layers.0.self_attn.o_proj.weight"].is_meta  # LLM untouched
    assert model.gated_attentions()[39].v_proj.lora_B["default"].weight.shape == (5120, 8)


def test_strict_load_reports_missing_and_unexpected() -> None:
    model = SalmonnAdapter.skeleton("7b")
    state = _synthetic("7b")
    state["speech_llama_proj.bias"] = torch.zeros(5120)
    del state["ln_audio.weight"]
    state["speech_Qformer.cls.predictions.bias"] = torch.zeros(30522)
    with pytest.raises(ValueError) as err:
        load_salmonn_state(model, state, strict=True)
    msg = str(err.value)
    assert "shape mismatch speech_llama_proj.bias: expected [4096], found [5120]" in msg
    assert "missing key ln_audio.weight" in msg and "unexpected key speech_Qformer.cls.predictions.bias" in msg


def test_check_checkpoint_and_cli(ckpt_13b: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert check_checkpoint("salmonn-13b", ckpt_13b) == []
    assert any("shape mismatch" in p for p in check_checkpoint("salmonn-7b", ckpt_13b))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--model", "salmonn-13b", "--ckpt", str(ckpt_13b)])) == 0
    assert capsys.readouterr().out.strip() == "OK: 273 keys match salmonn-13b"

    state = read_checkpoint(ckpt_13b)
    bad = dict(state)
    key = "speech_Qformer.bert.encoder.layer.0.output_query.dense.weight"
    bad[key.replace("output_query", "output")] = bad.pop(key)
    proj = "speech_llama_proj.weight"
    bad[proj] = torch.zeros(4096, 768)
    torch.save({"model": bad}, tmp_path / "bad.pth")
    problems = check_checkpoint("salmonn-13b", tmp_path / "bad.pth")
    assert sorted(problems) == sorted([
        f"missing key {key} (expected shape [768, 3072])",
        f"unexpected key {key.replace('output_query', 'output')} (shape [768, 3072])",
        f"shape mismatch {proj}: expected [5120, 768], found [4096, 768]",
    ])
    assert cli.run(parser.parse_args(["--model", "salmonn-13b", "--ckpt", str(tmp_path / "bad.pth")])) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and any(proj in line and "[5120, 768]" in line for line in out)
    assert check_checkpoint("salmonn-13b", tmp_path / "absent.pth") == ["file not found"]
    from ahamask_lightning.cli.main import main as ahamask

    assert ahamask(["model", "check-checkpoint", "--model", "salmonn-13b", "--ckpt", str(tmp_path / "absent.pth")]) == 2
    assert capsys.readouterr().err == f"ahamask: error: --ckpt {tmp_path / 'absent.pth'}: file not found\n"
    (tmp_path / "mask.pth").write_bytes(b"not a pickle, e.g. a safetensors file")  # one line, no unsafe advice
    assert check_checkpoint("salmonn-13b", tmp_path / "mask.pth") == [
        "unreadable: not a PyTorch checkpoint that loads with weights_only=True"]


def test_real_loading_path_with_tiny_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file-loading path (HF Whisper dir, BEATs .pt, HF LLM dir + tokenizer, salmonn_v1.pth)
    rebuilds a tiny SALMONN exactly: same loss on the same batch."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from ahamask_lightning.models.salmonn import model as salmonn_model
    from ahamask_lightning.models.salmonn.configs import full_spec, tiny_spec

    torch.manual_seed(0)
    tiny = SalmonnAdapter(variant="tiny")
    for name, p in tiny.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    whisper = WhisperForConditionalGeneration(WhisperConfig(**{**tiny.speech_encoder.config.to_dict(), "decoder_layers": 1,
                                            "decoder_attention_heads": 2, "decoder_ffn_dim": 64}))
    whisper.model.encoder.load_state_dict(tiny.speech_encoder.state_dict())  # saved as model.encoder.*
    whisper.save_pretrained(tmp_path / "whisper")
    torch.save({"cfg": tiny.beats.cfg.__dict__, "model": tiny.beats.state_dict()}, tmp_path / "beats.pt")
    base = __import__("copy").deepcopy(tiny.llama_model).unload()  # plain Llama without the adapters
    base.save_pretrained(tmp_path / "llm")
    tiny.tokenizer.save_pretrained(tmp_path / "llm")
    state = {released_key(n): p.detach().clone() for n, p in tiny.named_parameters() if is_trained_part(n)}
    for key, shape in expected_keys(tiny).items():
        state.setdefault(key, torch.zeros(shape, dtype=torch.long if "position_ids" in key else torch.float32))
    torch.save({"model": state}, tmp_path / "salmonn.pth")

    qformer_dims = tiny_spec(10).qformer  # the real path takes only the Q-Former sizes from the spec
    monkeypatch.setattr(salmonn_model, "full_spec", lambda v: full_spec(v).__class__(
        **{**full_spec(v).__dict__, "qformer": qformer_dims}))
    loaded = SalmonnAdapter(variant="13b", whisper_path=str(tmp_path / "whisper"), beats_path=str(tmp_path / "beats.pt"),
                            llm_path=str(tmp_path / "llm"), ckpt_path=str(tmp_path / "salmonn.pth"), dtype="float32",
                            tokenizer="transformers")  # the tiny tokenizer saved above is tokenizers-backed
    assert loaded.tokenizer.pad_token == "[PAD]" and loaded.llm.get_input_embeddings().num_embeddings == len(
        loaded.tokenizer)
    wavs = [0.1 * torch.randn(24000), 0.1 * torch.randn(40000)]
    args = ([None, "describe the audio"], ["hello world", "male"])
    outs = []
    for m in (loaded, tiny):
        embeds, mask, _ = m._inputs(m.collate(wavs, *args))
        with torch.no_grad():
            outs.append((embeds, m.llm(inputs_embeds=embeds, attention_mask=mask).logits[..., : len(tiny.tokenizer)]))
    # the [PAD] row added to the vocabulary is the only difference (it shifts the softmax, so compare logits)
    torch.testing.assert_close(outs[0], outs[1])
    assert torch.isfinite(loaded.loss(loaded.collate(wavs, *args)))
