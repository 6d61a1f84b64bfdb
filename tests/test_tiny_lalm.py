"""TinyLALM: checkpoint round trip, prompt format, batched generation equals one-by-one."""
from __future__ import annotations

import torch

from ahamask_lightning.models.splice import render_prompt
from ahamask_lightning.models.tiny_lalm import PROMPT_TEMPLATE, TinyLALM, random_tiny_lalm


def _model() -> TinyLALM:
    torch.manual_seed(0)
    m = random_tiny_lalm(["the cat sat on the mat", "a dog ran far away", "male female"], layers=2, heads=4,
                         hidden=32)
    for p in m.llm.parameters():  # larger weights so outputs depend on the inputs
        p.data.normal_(0, 0.3)
    return m.freeze()


def test_prompt_keeps_salmonn_spacing_without_instruction():
    assert render_prompt(PROMPT_TEMPLATE, None) == ("USER: <Speech>", "</Speech> \nASSISTANT:")
    assert render_prompt(PROMPT_TEMPLATE, "Transcribe.")[1] == "</Speech> Transcribe.\nASSISTANT:"


def test_checkpoint_round_trip(tmp_path):
    m = _model()
    m.save(tmp_path / "ck")
    loaded = TinyLALM(str(tmp_path / "ck")).freeze()
    audio = [torch.randn(12000) * 0.1]
    batch = m.collate(audio, ["what is said"], ["the cat"])
    with torch.no_grad():
        a, b = m.loss(batch), loaded.loss(loaded.collate(audio, ["what is said"], ["the cat"]))
    assert torch.allclose(a, b, atol=2e-2)  # weights are stored in fp16
    assert (tmp_path / "ck" / "model.safetensors").stat().st_size < 2_000_000


def test_missing_checkpoint_names_the_files(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="missing config.json, model.safetensors, tokenizer.json"):
        TinyLALM(str(tmp_path))


def test_batched_left_padded_generation_equals_one_by_one():
    m = _model()
    audios = [torch.randn(9000) * 0.1, torch.randn(20000) * 0.1, torch.randn(14000) * 0.1]
    instructions = ["what is said", None, "is it a male or a female"]
    together = m.generate(m.collate(audios, instructions), max_new_tokens=6)
    alone = [m.generate(m.collate([a], [i]), max_new_tokens=6)[0] for a, i in zip(audios, instructions)]
    assert together == alone
    assert len(set(alone)) > 1  # the inputs matter


def test_loss_only_on_target_tokens():
    m = _model()
    batch = m.collate([torch.randn(12000) * 0.1, torch.randn(16000) * 0.1], [None, "what"], ["the cat", "a dog ran"])
    from ahamask_lightning.models.splice import splice_embeddings

    with torch.no_grad():
        audio, lens = m.audio_encoder(batch["features"], batch["feature_lens"])
        _, mask, labels = splice_embeddings(m.llm.get_input_embeddings(), batch, audio, lens)
    for i in range(2):
        n_target = int(batch["target_lens"][i])
        assert int((labels[i] != -100).sum()) == n_target
        assert labels[i][labels[i] != -100].tolist() == batch["target_ids"][i, :n_target].tolist()
        assert int(mask[i].sum()) > n_target
