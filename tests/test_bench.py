"""The cost benchmarks run end to end at smoke size: ``python -m bench --smoke`` and ``bench/gpu.sh``'s
CPU smoke path write JSON with the expected parts, and ``python -m bench.report`` renders it.

No figure is asserted here (timings belong in BENCHMARKS.md); what is asserted is what a run must
produce: the parts, both vocabularies, losses that agree between the two loss paths, records of
the cache hits and of equal gradients with activation checkpointing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_bench_smoke_writes_json_and_report(tmp_path):
    out = tmp_path / "smoke.json"
    proc = _run([sys.executable, "-m", "bench", "--smoke", "--reps", "1", "--parts", "training,cache,decoding,serving,compile",
                 "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["name"] == "smoke" and {"torch", "transformers", "date", "cpu"} <= set(result["machine"])
    training = result["parts"]["training"]
    assert len(training["vocabs"]) == 2
    for v in training["vocabs"].values():
        assert {"mask_step", "mask_step_full_logits", "forward"} <= set(v["times"])
        assert abs(v["loss_target_only"] - v["loss_full_logits"]) < 1e-4 * abs(v["loss_full_logits"])
        assert v["batch"]["targets"] < v["batch"]["padded_tokens"]
    first = next(iter(training["vocabs"].values()))
    assert "mask_vs_lora" in first["ratios"] and first["lora_trainable_params"] > 0
    cache = result["parts"]["cache"]
    assert cache["qwen2_audio"]["hits"] > 0 and "encoder_share" in cache["tiny_lalm"]
    assert [r["batch"] for r in result["parts"]["decoding"]["rows"]] == [1, 2]
    serving = result["parts"]["serving"]["models"]["qwen2-audio-random"]
    assert all(r["identical_tokens_pruned_vs_gated"] for r in serving["pruned_decoding"])
    assert serving["mixed_task"]["identical_tokens_one_batch_vs_by_mask"]
    assert "skipped" in result["parts"]["compile"]  # compiling takes minutes: the CPU bench's job

    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nkept text\n")
    proc = _run([sys.executable, "-m", "bench.report", str(out), "--markdown", str(md)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nkept text") and "<!-- bench:end -->" in text
    assert "| mask_step |" in text and "python -m bench --smoke" in text
    proc = _run([sys.executable, "-m", "bench.report", str(out), "--markdown", str(md)])  # replaced, not appended
    assert md.read_text().count("<!-- bench:begin -->") == 1


def test_gpu_script_smoke_path_runs_on_cpu(tmp_path):
    proc = _run(["bash", "bench/gpu.sh"], env={"SMOKE": "1", "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    qwen = json.loads((tmp_path / "gpu-smoke-qwen.json").read_text())
    assert qwen["parts"]["largest"] == {"skipped": "needs a GPU", "wall_s": qwen["parts"]["largest"]["wall_s"]}
    rows = qwen["parts"]["scaling"]["rows"]
    checked = [r for r in rows if r["checkpoint_grad_max_abs_diff"] is not None]
    assert checked and all(r["checkpoint_grad_max_abs_diff"] < 1e-5 for r in checked)
    # SALMONN's checkpointing at the same LLM size: equal mask gradients, fewer tensors kept for backward
    for r in qwen["parts"]["scaling"]["salmonn"]["rows"]:
        assert r["checkpoint_grad_max_abs_diff"] < 1e-5
        assert r["memory"]["checkpointed"]["peak_bytes"] < r["memory"]["plain"]["peak_bytes"]
    salmonn = json.loads((tmp_path / "gpu-smoke-salmonn.json").read_text())
    assert salmonn["parts"]["salmonn"]["rows"][0]["samples_per_s"] > 0
    plain, checkpointed = salmonn["parts"]["salmonn"], salmonn["parts"]["salmonn_checkpointed"]
    assert not plain["checkpointing"] and checkpointed["checkpointing"]
    assert checkpointed["rows"][0]["samples_per_s"] > 0
    # fewer tensors kept for backward at the same batch (the CPU's memory proxy)
    assert checkpointed["rows"][0]["step_peak_bytes_above_weights"] < plain["rows"][-1]["step_peak_bytes_above_weights"]
    assert "SALMONN mask training" in (tmp_path / "BENCHMARKS.gpu.md").read_text()


def test_report_renders_every_committed_result():
    """BENCHMARKS.md is regenerated from bench/results/*.json: every file there renders or is named and left out."""
    proc = _run([sys.executable, "-m", "bench.report", "--stdout"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("### `python -m bench") >= 1 and "Failed:" not in proc.stdout
    assert "data-shar.json: not a `python -m bench` result" in proc.stderr


def test_data_bench_smoke_reads_every_manifest_kind(tmp_path):
    """``bench/bench_data.py --smoke``: each of the five manifest forms of the same 12 clips loads all 12
    (nothing rejected on the way), and the main-process planning rate is recorded for each."""
    out = tmp_path / "data.json"
    proc = _run([sys.executable, "bench/bench_data.py", "--smoke", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    kinds = {"jsonl", "cuts", "shar", "shar-wav", "shar-16k"}
    assert {r["manifest"] for r in report["results"]} == kinds
    assert all(r["utterances"] == report["clips"] == 12 for r in report["results"])
    assert set(report["planning_utt_per_s"]) == kinds and all(v > 0 for v in report["planning_utt_per_s"].values())
    assert set(report["shar_mib"]) == {"shar", "shar-wav", "shar-16k"}


def test_full_size_salmonn_bench_builds_the_13b_structure():
    """The GPU bench's SALMONN-13B path (random weights on the device) builds the published structure;
    here on the meta device, where it takes no memory, with its batch of 30 s clips."""
    from bench.salmonn import build, random_batch

    adapter = build("13b", "meta")
    assert (adapter.num_layers, adapter.num_heads, adapter.head_dim) == (40, 40, 128)
    assert adapter.llm_dtype.is_floating_point and adapter.llm_dtype.itemsize == 2  # bf16, as on the GPU
    batch = random_batch(adapter, 2, "meta")
    assert batch["raw_wav"].shape == (2, 16000 * 30) and batch["input_features"].shape[-1] == 3000
    assert not adapter.llm.model.is_activation_checkpointing
    # the bench's second part: the same structure with the LLM's activations checkpointed
    checkpointed = build("13b", "meta", gradient_checkpointing=True)
    assert checkpointed.gradient_checkpointing and checkpointed.llm.model.is_activation_checkpointing
