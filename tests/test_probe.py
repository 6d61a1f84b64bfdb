"""Answer-position probes: the states are those generation predicts from; the probe reads what is there."""
from __future__ import annotations

import json

import pytest
import torch

from ahamask_lightning.analysis.probe import main as probe_main
from ahamask_lightning.analysis.probe import probe_accuracy
from ahamask_lightning.models.tiny_lalm import random_tiny_lalm


def _model():
    torch.manual_seed(0)
    m = random_tiny_lalm(["the cat sat on the mat", "male female"], layers=2, heads=4, hidden=32)
    for p in m.llm.parameters():
        p.data.normal_(0, 0.3)
    return m.freeze()


def test_last_position_states_predict_the_first_answer_token_in_left_padded_batches():
    m = _model()
    audios = [torch.randn(9000) * 0.1, torch.randn(20000) * 0.1]
    instructions = [None, "is it a male or a female"]
    together = m.hidden_states(m.collate(audios, instructions))
    for i, (a, ins) in enumerate(zip(audios, instructions)):
        alone = m.hidden_states(m.collate([a], [ins]))
        for h_all, h_one in zip(together, alone):
            assert torch.allclose(h_all[i, -1], h_one[0, -1], atol=2e-3)
    # the last state, through the head, is the greedy first token of generate()
    batch = m.collate(audios, instructions)
    logits = m.llm.lm_head(together[-1][:, -1])  # transformers' last hidden state is already normed
    embeds, mask, _ = m._inputs(batch)
    out = m.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=1, do_sample=False,
                         pad_token_id=m.tokenizer.pad_token_id)
    assert logits.argmax(-1).tolist() == out[:, -1].tolist()


def test_probe_reads_a_linear_label_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=gen)
    y = ["a" if v > 0 else "b" for v in x[:, 3].tolist()]
    assert probe_accuracy(x[:300], y[:300], x[300:], y[300:]) >= 90
    noise = ["a" if v > 0 else "b" for v in torch.randn(400, generator=gen).tolist()]
    assert probe_accuracy(x[:300], noise[:300], x[300:], noise[300:]) <= 70


def test_probe_cli_writes_one_row_per_hidden_state(synth_corpus, tmp_path, capsys):
    m = random_tiny_lalm(["the cat sat on the mat", "male female"], layers=2, heads=4, hidden=32)
    m.save(tmp_path / "ck")
    assert probe_main(["--checkpoint", str(tmp_path / "ck"), "--data", str(synth_corpus), "--task", "gr",
                       "--train-samples", "16", "--test-samples", "8", "--out", str(tmp_path / "probe")]) == 0
    rows = (tmp_path / "probe" / "probe.csv").read_text().strip().splitlines()
    assert rows[0] == "hidden_state,instruction,update_instruction,none,update_none" and len(rows) == 1 + 3
    assert all(0 <= float(r.split(",")[i]) <= 100 for r in rows[1:] for i in (1, 3))
    assert all(float(r.split(",")[i]) >= 0 for r in rows[1:-1] for i in (2, 4)) and rows[-1].endswith("nan")


def test_answer_modes_name_the_task_a_prediction_belongs_to(tmp_path, capsys):
    from ahamask_lightning.analysis.modes import answer_mode
    from ahamask_lightning.analysis.modes import main as modes_main

    assert [answer_mode(p) for p in ("fast", " Female", "Yes.", "", '{"ASR": "a"}', "Male|the cat",
                                     "a quiet low plucked note", "please read the hat")] == [
        "src", "gr", "asv", "empty", "json", "composite", "caption", "text"]
    preds = tmp_path / "predictions.jsonl"
    preds.write_text("\n".join(json.dumps({"prediction": p, "reference": r}) for p, r in
                               [("fast", "fast"), ("Female", "slow"), ("a long beep", "slow")]) + "\n")
    assert modes_main([str(preds)]) == 0
    out = capsys.readouterr().out
    assert "| slow | 1 | 1 | 0 | 2 |" in out and "| all | 1 | 1 | 1 | 3 |" in out
    # infer / predict output holds no reference; a line that is not a prediction is named
    inferred = tmp_path / "infer.jsonl"
    inferred.write_text(json.dumps({"clip": "a", "prediction": "Male"}) + "\n")
    assert modes_main([str(inferred)]) == 0 and "| - | 1 | 1 |" in capsys.readouterr().out
    inferred.write_text(json.dumps({"clip": "a", "prediction": "Male"}) + "\nnot json\n")
    assert modes_main([str(inferred)]) == 2
    assert f"{inferred}:2: expected a JSON object with 'prediction'" in capsys.readouterr().err


def test_layer_updates_find_an_inert_layer():
    from ahamask_lightning.analysis.probe import layer_updates

    h0 = torch.ones(4, 8)
    states = torch.stack([h0, h0 * 2, h0 * 2], dim=1)  # layer 1 doubles the state, layer 2 does nothing
    assert layer_updates(states) == pytest.approx([1.0, 0.0])


def test_analysis_tools_name_missing_files_in_one_line(tmp_path, capsys):
    from ahamask_lightning.analysis import modes, probe

    assert modes.main([str(tmp_path / "nope.jsonl")]) == 2
    assert probe.main(["--data", str(tmp_path), "--task", "gr", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and f"not found: {tmp_path / 'nope.jsonl'}" in err[0]
    assert f"not found: {tmp_path / 'manifests' / 'train' / 'gr.jsonl'}" in err[1]
