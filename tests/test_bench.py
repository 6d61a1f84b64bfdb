"""The cost benchmarks run end to end at smoke size: ``python -m bench --smoke`` and ``bench/gpu.sh``'s
CPU smoke path write JSON with the expected parts, and ``python -m bench.report`` renders it; the
command-line errors are one line, before any part runs; the bench's own arithmetic (weight bound,
memory proxy, largest-batch search, out-of-memory rows, nominal peaks) on small inputs.

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

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_bench_smoke_writes_json_and_report(tmp_path):
    """``python -m bench --smoke`` on the parts whose CPU configuration differs from the GPU sequence's
    (TinyLALM's cache, SALMONN's checkpointing at the bench LLM size, compile skipped); training,
    decoding and serving at the same smoke size run in the gpu.sh smoke below."""
    out = tmp_path / "smoke.json"
    proc = _run([sys.executable, "-m", "bench", "--smoke", "--reps", "1", "--parts", "cache,scaling,compile",
                 "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["name"] == "smoke" and {"torch", "transformers", "date", "cpu"} <= set(result["machine"])
    cache = result["parts"]["cache"]
    assert cache["qwen2_audio"]["hits"] > 0 and "encoder_share" in cache["tiny_lalm"]
    assert "skipped" in result["parts"]["compile"]  # compiling takes minutes: the CPU bench's job
    scaling = result["parts"]["scaling"]
    assert not scaling.get("partial") and scaling["one_model"]
    checked = [r for r in scaling["rows"] if r["checkpoint_grad_max_abs_diff"] is not None]
    assert checked and all(r["checkpoint_grad_max_abs_diff"] < 1e-5 for r in checked)
    assert all(r["memory"]["checkpointed"]["peak_bytes"] < r["memory"]["plain"]["peak_bytes"] for r in checked)
    # SALMONN's checkpointing at the same LLM size: equal mask gradients, fewer tensors kept for backward
    for r in scaling["salmonn"]["rows"]:
        assert r["checkpoint_grad_max_abs_diff"] < 1e-5
        assert r["memory"]["checkpointed"]["peak_bytes"] < r["memory"]["plain"]["peak_bytes"]

    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nkept text\n")
    proc = _run([sys.executable, "-m", "bench.report", str(out), "--markdown", str(md)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nkept text") and "<!-- bench:end -->" in text
    assert "| checkpointed |" in text and "python -m bench --smoke" in text
    proc = _run([sys.executable, "-m", "bench.report", str(out), "--markdown", str(md)])  # replaced, not appended
    assert md.read_text().count("<!-- bench:begin -->") == 1


def test_gpu_script_smoke_path_runs_on_cpu(tmp_path):
    """``SMOKE=1 bash bench/gpu.sh`` runs every command of the GPU sequence (the --full-size code paths),
    at smoke size on the CPU."""
    proc = _run(["bash", "bench/gpu.sh"], env={"SMOKE": "1", "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = ["qwen2-audio-7b", "qwen2-audio-7b-largest", "qwen2-audio-7b-decoding", "salmonn-13b"]
    results = {n: json.loads((tmp_path / f"gpu-smoke-{n}.json").read_text()) for n in names}
    assert all(r["name"].startswith("smoke-") for r in results.values())
    assert all("error" not in p and not p.get("partial") for r in results.values() for p in r["parts"].values())
    qwen = results["qwen2-audio-7b"]
    assert set(qwen["parts"]) == {"training", "cache", "scaling"}
    training = qwen["parts"]["training"]
    assert len(training["vocabs"]) == 2
    for v in training["vocabs"].values():
        assert {"mask_step", "mask_step_full_logits", "forward"} <= set(v["times"])
        assert abs(v["loss_target_only"] - v["loss_full_logits"]) < 1e-4 * abs(v["loss_full_logits"])
        assert v["batch"]["targets"] < v["batch"]["padded_tokens"]
    first = next(iter(training["vocabs"].values()))
    assert "mask_vs_lora" in first["ratios"] and first["lora_trainable_params"] > 0
    assert qwen["parts"]["cache"]["qwen2_audio"]["hits"] > 0
    rows = qwen["parts"]["scaling"]["rows"]
    checked = [r for r in rows if r["checkpoint_grad_max_abs_diff"] is not None]
    assert checked and all(r["checkpoint_grad_max_abs_diff"] < 1e-5 for r in checked)
    largest = results["qwen2-audio-7b-largest"]["parts"]["largest"]
    assert largest == {"skipped": "needs a GPU", "wall_s": largest["wall_s"]}
    decoding = results["qwen2-audio-7b-decoding"]["parts"]
    assert [r["batch"] for r in decoding["decoding"]["rows"]] == [1, 2]
    assert not decoding["decoding"]["static_cache_compiled"]
    serving = decoding["serving"]
    assert serving["settings"]["reps"] == 1 and serving["smoke"]  # --reps reached serving; smoke sizes won
    model = serving["models"]["qwen2-audio-7b"]
    assert model["size"] == "qwen2-audio-7b at smoke size"
    assert all(r["identical_tokens_pruned_vs_gated"] for r in model["pruned_decoding"])
    assert model["mixed_task"]["identical_tokens_one_batch_vs_by_mask"]
    salmonn = results["salmonn-13b"]
    assert salmonn["parts"]["salmonn"]["rows"][0]["samples_per_s"] > 0
    plain, checkpointed = salmonn["parts"]["salmonn"], salmonn["parts"]["salmonn_checkpointed"]
    assert not plain["checkpointing"] and checkpointed["checkpointing"]
    assert checkpointed["rows"][0]["samples_per_s"] > 0
    # fewer tensors kept for backward at the same batch (the CPU's memory proxy), and no weights among them
    assert checkpointed["rows"][0]["step_peak_bytes_above_weights"] < plain["rows"][-1]["step_peak_bytes_above_weights"]
    assert plain["rows"][-1]["step_peak_bytes_above_weights"] < plain["weights_bytes"]
    text = (tmp_path / "BENCHMARKS.gpu.md").read_text()
    assert "SALMONN mask training" in text and "| mask_step |" in text and "Largest batch" in text


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


# --- one-line errors (F7): each refused before any part runs -----------------------------------------
def _main_fails(argv, monkeypatch, capsys) -> str:
    """Runs ``python -m bench`` in this process with every part stubbed to fail the test; returns stderr."""
    import bench.__main__ as bench_main
    import bench.salmonn

    def no_part(*args, **kwargs):
        raise AssertionError("a part ran before the arguments were checked")

    monkeypatch.setattr(bench_main, "run_part", no_part)
    monkeypatch.setattr(bench.salmonn, "salmonn_full_size", no_part)
    with pytest.raises(SystemExit) as exit_info:
        bench_main.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_bench_out_directory_is_refused_before_running(tmp_path, monkeypatch, capsys):
    line = _main_fails(["--smoke", "--parts", "largest", "--out", str(tmp_path)], monkeypatch, capsys)
    assert "--out" in line and "is a directory" in line
    (tmp_path / "afile").write_text("x")
    line = _main_fails(["--smoke", "--parts", "largest", "--out", str(tmp_path / "afile" / "r.json")],
                       monkeypatch, capsys)
    assert "--out" in line and "cannot make its folder" in line


def test_bench_cuda_without_gpu_is_one_line(tmp_path, monkeypatch, capsys):
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    line = _main_fails(["--smoke", "--device", device, "--parts", "largest", "--out", str(tmp_path / "r.json")],
                       monkeypatch, capsys)
    assert f"--device {device}" in line


@pytest.mark.parametrize("reps", ["0", "-1"])
def test_bench_reps_below_one_is_refused(reps, tmp_path, monkeypatch, capsys):
    line = _main_fails(["--smoke", "--parts", "cache", "--reps", reps, "--out", str(tmp_path / "r.json")],
                       monkeypatch, capsys)
    assert "--reps" in line and ">= 1" in line


def test_bench_empty_parts_is_refused(tmp_path, monkeypatch, capsys):
    line = _main_fails(["--smoke", "--parts", ",,", "--out", str(tmp_path / "r.json")], monkeypatch, capsys)
    assert "--parts" in line and "names no part" in line


def test_bench_salmonn_parts_are_honoured(tmp_path, monkeypatch, capsys):
    line = _main_fails(["--smoke", "--full-size", "salmonn-13b", "--parts", "training", "--out",
                        str(tmp_path / "r.json")], monkeypatch, capsys)
    assert "unknown training" in line and "salmonn, salmonn_checkpointed" in line
    import bench.__main__ as bench_main
    import bench.salmonn

    calls = []
    monkeypatch.setattr(bench.salmonn, "salmonn_full_size", lambda *a: calls.append(a) or {"rows": []})
    out = tmp_path / "s.json"
    assert bench_main.main(["--smoke", "--full-size", "salmonn-13b", "--parts", "salmonn_checkpointed",
                            "--out", str(out)]) == 0
    assert list(json.loads(out.read_text())["parts"]) == ["salmonn_checkpointed"] and len(calls) == 1


def test_bench_failed_part_keeps_its_rows(tmp_path, monkeypatch):
    """A part that stops after reporting rows (a long part cut by an error) keeps them in the JSON."""
    import bench.__main__ as bench_main

    def half(part, size, args, device, progress=None):
        progress({"rows": [{"clips": 1}]})
        raise RuntimeError("stopped")

    monkeypatch.setattr(bench_main, "run_part", half)
    out = tmp_path / "r.json"
    assert bench_main.main(["--smoke", "--parts", "scaling", "--out", str(out)]) == 1
    part = json.loads(out.read_text())["parts"]["scaling"]
    assert part["rows"] == [{"clips": 1}] and part["partial"] and "stopped" in part["error"]


@pytest.mark.parametrize("case", ["missing-input", "missing-markdown-folder"])
def test_report_bad_paths_are_one_line(case, tmp_path, capsys):
    from bench.report import main as report_main

    result = REPO / "bench" / "results" / "cpu-1thread.json"
    argv = ([str(tmp_path / "nonexistent.json"), "--markdown", str(tmp_path / "B.md")] if case == "missing-input"
            else [str(result), "--markdown", str(tmp_path / "nodir" / "B.md")])
    with pytest.raises(SystemExit) as exit_info:
        report_main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert ("nonexistent.json: no such file" in line) if case == "missing-input" else ("no folder" in line)


# --- the bench's own arithmetic --------------------------------------------------------------------
def test_weight_bound_counts_the_heads_pruning_keeps():
    """F8: a layer with every head off keeps one (zeroed) head and, in a grouped layer, a kept KV group
    keeps padding heads; the bound is computed from the pruned blocks' weights, not the mask's fraction."""
    from ahamask_lightning.masking.prune import pruned_copies
    from bench.bench_serving import weight_bound
    from bench.models import SIZES, qwen2_audio

    adapter = qwen2_audio(SIZES["smoke"], 1000, "cpu")  # 2 layers x 4 heads, 2 KV heads
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # layer 1: every head off
    blocks, _ = pruned_copies(adapter, mask)

    def linears(modules):
        return sum(m.weight.numel() for b in modules for m in b.modules() if isinstance(m, torch.nn.Linear))

    dense_attention = linears(adapter.gated_attentions())
    llm = [m for n, m in adapter.named_modules() if isinstance(m, torch.nn.Linear)
           and ("language_model" in n or n.endswith("lm_head"))]
    other = sum(m.weight.numel() for m in llm) - dense_attention
    expected = (dense_attention + other) / (linears(blocks) + other)
    by_fraction = (dense_attention + other) / (dense_attention * mask.mean().item() + other)
    assert weight_bound(adapter, blocks) == pytest.approx(expected, rel=1e-12)
    assert weight_bound(adapter, blocks) < by_fraction  # the kept heads cost something


def test_cpu_memory_proxy_leaves_the_weights_out():
    """F1: a frozen Linear saves its weight for the input gradient; the proxy must not count it."""
    from bench.timing import saved_tensor_bytes

    layer = torch.nn.Linear(256, 256, bias=False).requires_grad_(False)
    x = torch.randn(4, 256, requires_grad=True)

    def step():
        (layer(x) * 2).sum().backward()

    assert saved_tensor_bytes(step, [layer]) == 0  # x is not saved (weight frozen); the weight is left out
    assert saved_tensor_bytes(step) == layer.weight.nbytes


def test_largest_batch_search_brackets_and_reports_each_probe():
    from bench.training import search_largest

    probes, seen = [], []

    def fits(n):
        probes.append(n)
        return n <= 37

    lo, hi = search_largest(fits, 192, lambda lo, hi: seen.append((lo, hi)))
    assert lo <= 37 < hi and hi - lo <= max(1, lo // 4) and max(probes) <= 192
    assert len(seen) == len(probes) and seen[-1] == (lo, hi)
    assert search_largest(lambda n: True, 192) == (192, None)
    assert search_largest(lambda n: False, 192) == (0, 1)


def test_scaling_row_survives_a_variant_out_of_memory():
    """F2: a variant that runs out of GPU memory is recorded as OOM in its row; the other is still measured."""
    from bench.training import compare_steps

    class Step:
        def __init__(self, oom):
            self.oom, self.adapter, self.mask = oom, torch.nn.Module(), torch.nn.Module()
            self.mask.logits = torch.nn.Parameter(torch.zeros(2))
            self.adapter.gradient_checkpointing = False

        def step(self, batch):
            if self.oom:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            self.mask.logits.grad = torch.ones(2)
            return 0.0

        def weights(self):
            return (self.adapter, self.mask)

    row = compare_steps({"plain": (Step(True), None), "checkpointed": (Step(False), None)}, {}, 1, "cpu")
    assert row["oom"] == ["plain"] and row["memory"]["plain"] == "OOM"
    assert set(row["times"]) == {"checkpointed"} and row["checkpoint_grad_max_abs_diff"] is None


def test_nominal_peak_from_the_device_name():
    """F9: DESIGN's MFU denominator, from the GPU's name (None when unknown: only the measured peak)."""
    from bench.timing import nominal_peak

    assert nominal_peak("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert nominal_peak("NVIDIA H200", torch.bfloat16) == 989e12
    assert nominal_peak("NVIDIA A100-SXM4-80GB", torch.bfloat16) == 312e12
    assert nominal_peak("NVIDIA H100 PCIe", torch.bfloat16) == 756e12
    assert nominal_peak("Some Future GPU", torch.bfloat16) is None
    assert nominal_peak("NVIDIA H100 80GB HBM3", torch.float32) is None
