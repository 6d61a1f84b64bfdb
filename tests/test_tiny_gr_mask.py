"""The project's scientific regression test: a GR mask on the committed TinyLALM, without instruction.

It runs, for each committed checkpoint with a ``reference.json`` (the 6 x 8 model and the 8 x 16
grown one), the same commands as the measurement recorded there and in its model card: synthesise
a small SynthSpeech corpus, train an AHAMask for gender recognition on instruction-free audio for
a few CPU minutes, test it, and compare with the recorded accuracy within the recorded margin. A change that breaks the mask, the gate, the
estimator, the schedules, the data or the checkpoint moves this number.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ahamask_lightning import experiment
from ahamask_lightning.experiment import Condition, fit_mask

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = sorted(p.parent.name for p in (REPO / "checkpoints").glob("*/reference.json"))
# both checkpoints' measurements share one corpus, so the fixture below synthesises it once
SYNTH = {"synth_n": 400, "synth_seed": 0}


def reference(checkpoint: str) -> dict:
    ref = json.loads((REPO / "checkpoints" / checkpoint / "reference.json").read_text())["ci_gr_mask"]
    assert {k: ref[k] for k in SYNTH} == SYNTH, f"checkpoints/{checkpoint}/reference.json: corpus differs"
    return ref


def gated_heads(checkpoint: str) -> int:
    llm = json.loads((REPO / "checkpoints" / checkpoint / "config.json").read_text())["llm"]
    return llm["num_hidden_layers"] * llm["num_attention_heads"]


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed to synthesise speech")
    from data_modules.synth import synthesize

    out = tmp_path_factory.mktemp("synth_gr")
    synthesize(out, n=SYNTH["synth_n"], seed=SYNTH["synth_seed"])
    return out


def test_checkpoints_with_a_reference_are_found() -> None:
    assert {"tiny_lalm", "tiny_lalm_8x16g"} <= set(CHECKPOINTS)


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_gr_mask_without_instruction_matches_the_model_card(checkpoint: str, corpus: Path, tmp_path: Path,
                                                            in_repo) -> None:
    ref = reference(checkpoint)
    m = corpus / "manifests"
    data = ["--model.init_args.model.init_args.checkpoint", f"checkpoints/{checkpoint}",
            "--data.init_args.train", f"[{m}/train/gr.jsonl]", "--data.init_args.val", f"[{m}/val/gr.jsonl]",
            "--data.init_args.test", f"[{m}/test/gr.jsonl]", "--trainer.limit_val_batches", "1"]
    mask = fit_mask("experiments/gr_tiny.yaml", tmp_path / "fit",
                    data + ["--trainer.max_steps", str(ref["steps"])])
    masked = experiment.test_condition("experiments/gr_tiny.yaml", Condition("AHAMask", "none", True, str(mask)),
                            tmp_path / "masked", data)
    bare = experiment.test_condition("experiments/gr_tiny.yaml", Condition("no instruction", "none", False),
                          tmp_path / "bare", data)
    acc, bare_acc = masked["metrics"]["test/gr/acc"], bare["metrics"]["test/gr/acc"]
    exact = masked["metrics"]["test/gr/acc_exact"]
    heads = masked["run"]["active_heads"]
    print(f"{checkpoint}: GR without instruction: AHAMask {acc:.2f} % (bare label {exact:.2f} %, {heads} heads), "
          f"no mask {bare_acc:.2f} %; reference {ref['acc']:.2f} / {ref['acc_exact']:.2f} "
          f"+- {ref['margin']}")
    assert abs(acc - ref["acc"]) <= ref["margin"]
    assert abs(exact - ref["acc_exact"]) <= ref["margin"]
    assert abs(bare_acc - ref["no_mask_acc"]) <= ref["margin"]
    assert heads < gated_heads(checkpoint)  # the mask switched heads off
