"""Timing and memory measurement shared by the benchmarks.

Variants are timed interleaved (A B C A B C ...) in one process and summarised by medians, so
that load from other processes on a shared machine hits every variant alike; the spread
(min/max) is recorded with each median. Peak memory: on CUDA ``torch.cuda.max_memory_allocated``
around the call, above what was allocated before it (the weights); on a CPU, which has no
allocator statistics, the bytes autograd keeps for backward (distinct storages seen by
``torch.autograd.graph.saved_tensors_hooks``) less the storages of the model's parameters and
buffers (a frozen ``Linear`` still saves its weight for the input gradient; that is no extra
memory): a proxy of the step's activation memory, not of process RSS.

By hand rather than ``torch.utils.benchmark`` (checked, torch 2.11): its ``Timer`` measures one
statement at a time, so two variants would be timed in separate blocks, and the load another job
puts on a shared machine between the blocks would land in the ratio; nor does it record memory.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(variants: dict[str, Callable[[], object]], reps: int, device: str, warmup: int = 1) -> dict:
    """``{name: {median_s, min_s, max_s, times, cpu_median_s, cpu_times}}`` over ``reps`` interleaved rounds
    after ``warmup`` rounds. ``cpu_*``: this process's CPU time (all threads), which on a CPU shared with
    other jobs counts the work done rather than the waiting for a core."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(warmup + reps):
        for name, fn in variants.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return {name: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "times": ts,
                   "cpu_median_s": statistics.median(cpu[name]), "cpu_times": cpu[name]}
            for name, ts in times.items()}


def ratio(results: dict, num: str, den: str) -> dict:
    """Median-of-medians ratio plus the median of the per-round ratios (paired, so shared load cancels),
    and the ratio of the CPU-time medians."""
    a, b = results[num], results[den]
    paired = [x / y for x, y in zip(a["times"], b["times"])]
    out = {"ratio": a["median_s"] / b["median_s"], "paired_median": statistics.median(paired),
           "paired_min": min(paired), "paired_max": max(paired)}
    if a.get("cpu_median_s") and b.get("cpu_median_s"):
        out["cpu_ratio"] = a["cpu_median_s"] / b["cpu_median_s"]
    return out


CPU_MEMORY_KIND = "saved tensors for backward, parameters and buffers left out (CPU proxy)"


def weight_storages(modules: Iterable[torch.nn.Module]) -> set[int]:
    """``data_ptr`` of the storage of every parameter and buffer of ``modules`` (views share it)."""
    return {t.untyped_storage().data_ptr() for m in modules
            for t in (*m.parameters(), *m.buffers()) if t.untyped_storage().nbytes()}


def saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.nn.Module] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs (CPU memory proxy),
    leaving out the storages of the parameters and buffers of ``exclude`` (the model's weights, which
    autograd saves by reference: they take no memory beyond the model's own)."""
    skip = weight_storages(exclude)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def peak_memory(fn: Callable[[], object], device: str, exclude: Iterable[torch.nn.Module] = ()) -> dict:
    """CUDA: peak allocated bytes above what was allocated before (the weights are already there).
    CPU: the saved-tensor proxy with the parameters and buffers of ``exclude`` (the model) left out."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated() - base, "kind": "cuda max_memory_allocated"}
    return {"peak_bytes": saved_tensor_bytes(fn, exclude), "kind": CPU_MEMORY_KIND}


def matmul_peak(device: str, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    """Measured dense matmul FLOP/s at size n (the MFU denominator besides the nominal peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


# Nominal dense peak (FLOP/s) per GPU model and dtype, from NVIDIA's data sheets (dense, no sparsity);
# matched against torch.cuda.get_device_name, first match wins (the PCIe/NVL H100s are slower than the SXM).
NOMINAL_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bfloat16": 756e12, "float16": 756e12}),
    ("H100 NVL", {"bfloat16": 835e12, "float16": 835e12}),
    ("H100", {"bfloat16": 989e12, "float16": 989e12}),
    ("H200", {"bfloat16": 989e12, "float16": 989e12}),
    ("A100", {"bfloat16": 312e12, "float16": 312e12}),
)


def nominal_peak(device_name: str, dtype: torch.dtype) -> float | None:
    """The data-sheet dense peak of the GPU named ``device_name`` at ``dtype``; None when unknown."""
    key = str(dtype).removeprefix("torch.")
    for model, peaks in NOMINAL_PEAKS:
        if model.lower() in device_name.lower():
            return peaks.get(key)
    return None
