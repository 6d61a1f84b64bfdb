"""FSDP units of one dtype each, on SALMONN as its real build holds it: an fp16 LLM, peft's fp32 LoRA
inside the q/v projections of each decoder layer, and fp32 Whisper/BEATs/connector beside the fp16
embeddings and lm_head. FSDP flattens each unit into one tensor of one dtype, so the plain
decoder-layer policy cannot wrap it ("Must flatten tensors with uniform dtype").

FSDP runs on the CPU here on a gloo group (torch's FSDP with ``device_id=cpu``; Lightning's
FSDPStrategy itself asks for an accelerator), with the policy ``MaskFSDPStrategy`` installs at set-up.
One process cannot shard (FSDP switches to NO_SHARD), so a second test runs two ranks, which do.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.plugins.precision import FSDPPrecision
from torch import nn

SR = 16000
LORA_UNITS = {f"adapter.llama_model.base_model.model.model.layers.{i}.self_attn.{proj}.{ab}.default"
              for i in (0, 1) for proj in ("q_proj", "v_proj") for ab in ("lora_A", "lora_B")}


def salmonn_as_built(llm_dtype: torch.dtype = torch.float16) -> nn.Module:
    """The tiny SALMONN in an AHAMaskModule, with the real build's dtypes: the LLM loaded in
    ``llm_dtype``, the LoRA that peft adds in fp32, the encoders and connector in fp32. peft starts
    lora_B at zero; it is drawn here so that the fp32 LoRA path changes the loss."""
    from ahamask_lightning.models import SalmonnAdapter
    from ahamask_lightning.module import AHAMaskModule

    torch.manual_seed(0)
    module = AHAMaskModule(SalmonnAdapter(tiny=True), init_mean=0.0, init_std=2.0)  # some heads off
    module.adapter.llm.to(llm_dtype)
    for name, part in module.adapter.llm.named_modules():
        if name.endswith(("lora_A", "lora_B")):
            part.float()
            if name.endswith("lora_B"):
                nn.init.normal_(part.default.weight, 0.0, 0.5)
    return module


def batch_of(module: nn.Module) -> dict:
    g = torch.Generator().manual_seed(1)
    wavs = [0.1 * torch.randn(int(s * SR), generator=g) for s in (1.5, 3.0)]
    return module.adapter.collate(wavs, [None, "describe the audio"], ["hello world", "male"])


def gated_loss(module: nn.Module, batch: dict) -> torch.Tensor:
    """The training step's loss: a sampled mask (fixed noise) gates the LLM heads."""
    torch.manual_seed(5)
    mask = module.head_mask()
    with module.gate.apply(mask):
        return module.adapter.loss(batch)


@contextmanager
def gloo_group(store: Path, rank: int, world_size: int):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def wrap_as_the_strategy_does(module: nn.Module, sharding_strategy: str | None = None) -> tuple[nn.Module, dict]:
    """``module`` wrapped with the policy and keywords that ``MaskFSDPStrategy`` gives Lightning, and the
    dtypes of each FSDP unit's own parameters by the unit's name in ``module``. On the CPU; with
    SALMONN's 16-mixed (which leaves the dtypes as they are) but without FSDP's mixed-precision
    casts, so that the loss can be compared with the unwrapped module's."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from ahamask_lightning.accelerators import MaskFSDPStrategy

    strategy = MaskFSDPStrategy(precision_plugin=FSDPPrecision("16-mixed"),
                                **({"sharding_strategy": sharding_strategy} if sharding_strategy else {}))
    strategy.connect(module)
    strategy.use_model_wrap_policy()
    names = {m: n for n, m in module.named_modules()}
    wrapped = FSDP(module, device_id=torch.device("cpu"), sharding_strategy=strategy.sharding_strategy, **strategy.kwargs)
    units = {}
    for unit in wrapped.modules():
        if isinstance(unit, FSDP):
            dtypes, stack = set(), [unit.module]
            while stack:
                part = stack.pop()
                dtypes |= {p.dtype for p in part.parameters(recurse=False)}
                stack += [c for c in part.children() if not isinstance(c, FSDP)]
            units[names[unit.module]] = dtypes
    return wrapped, units


def check_units(units: dict) -> None:
    assert all(len(dtypes) == 1 for dtypes in units.values()), units
    assert units[""] == {torch.float32}  # the root: Whisper, BEATs, the connector (the most bytes)
    assert units["adapter.llama_model"] == {torch.float16}  # the LLM outside its layers: embeddings, norm, lm_head
    assert {n for n in units if ".lora_" in n} == LORA_UNITS and all(units[n] == {torch.float32} for n in LORA_UNITS)
    layers = [n for n in units if n.rpartition(".")[0].endswith("model.layers")]
    assert len(layers) == 2 and all(units[n] == {torch.float16} for n in layers)
    assert units["head_mask"] == {torch.float32}
    assert len(units) == 1 + 1 + 8 + 2 + 1


def test_salmonn_as_built_wraps_with_one_dtype_per_unit_and_the_same_gated_loss(tmp_path):
    from ahamask_lightning.accelerators.ddp import wrap_plan

    ref, module = salmonn_as_built(), salmonn_as_built()
    batch = batch_of(ref)
    expected = gated_loss(ref, batch)
    expected.backward()
    by_module = wrap_plan(module)
    plan = {n: by_module[m] for n, m in module.named_modules() if m in by_module}
    # the dtype units are un-sharded (the adapter reaches into the LLM past its peft wrapper)
    assert all(isinstance(plan[n], dict) and plan[n]["sharding_strategy"].name == "NO_SHARD"
               for n in [*LORA_UNITS, "adapter.llama_model", "head_mask"])
    with gloo_group(tmp_path / "store", 0, 1):
        wrapped, units = wrap_as_the_strategy_does(module)
        module.forward = functools.partial(gated_loss, module)  # the root unit's forward runs the step
        loss = wrapped(batch)
        loss.backward()
    check_units(units)
    torch.testing.assert_close(loss, expected)
    assert module.head_mask.logits.grad is not None
    torch.testing.assert_close(module.head_mask.logits.grad, ref.head_mask.logits.grad)


def run_rank(rank: int, world_size: int, store: str, out: str) -> None:
    """One rank of the two-rank test: FULL_SHARD, so the decoder layers and the root are really sharded."""
    ref, module = salmonn_as_built(), salmonn_as_built()
    batch = batch_of(ref)
    expected = gated_loss(ref, batch)
    expected.backward()
    with gloo_group(Path(store), rank, world_size):
        wrapped, units = wrap_as_the_strategy_does(module, "FULL_SHARD")
        module.forward = functools.partial(gated_loss, module)
        loss = wrapped(batch)
        loss.backward()
        check_units(units)
        result = {"loss": loss.item(), "expected": expected.item(), "grad": module.head_mask.logits.grad.tolist(),
                  "expected_grad": ref.head_mask.logits.grad.tolist()}
    Path(out).write_text(json.dumps(result))


def test_two_ranks_shard_salmonn_as_built_and_keep_the_gated_loss(tmp_path):
    """Sharded layers and root, with the un-sharded dtype units the adapter reaches into outside their
    ``forward`` (a sharded ``llama_model`` unit fails here: 'weight' must be 2-D in the embedding)."""
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), "2", str(tmp_path / "store"),
                               str(tmp_path / f"rank{rank}.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for rank in (0, 1)]
    errors = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        if proc.returncode:
            errors.append(err[-3000:])
    assert not errors, errors
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["loss"] == pytest.approx(r["expected"], rel=1e-6)
        torch.testing.assert_close(torch.tensor(r["grad"]), torch.tensor(r["expected_grad"]))


def test_the_13b_structure_on_meta_gets_its_lora_and_embedding_units():
    """The full-size SALMONN-13B structure (meta tensors: no memory), with the real build's dtypes: 40
    layers, 160 LoRA Linears and the LLM outside its layers (0.66 GB in fp16) are units; the root keeps
    the 3 GB of fp32 encoders."""
    from ahamask_lightning.accelerators.ddp import wrap_plan
    from ahamask_lightning.models import SalmonnAdapter
    from ahamask_lightning.module import AHAMaskModule

    adapter = SalmonnAdapter.skeleton("13b")
    adapter.llm.to(torch.float16)
    for name, part in adapter.llm.named_modules():
        if name.endswith(("lora_A", "lora_B")):
            part.float()
    module = AHAMaskModule(adapter)
    plan = wrap_plan(module)
    names = {m: n for n, m in module.named_modules()}
    lora = [m for m in plan if ".lora_" in names[m]]
    layers = [m for m, unit in plan.items() if unit is True]
    assert len(lora) == 160 and len(layers) == 40 and {p.dtype for m in lora for p in m.parameters()} == {torch.float32}
    assert set(plan) == {*lora, *layers, module.head_mask, module.adapter.llama_model}

    def own_bytes(unit: nn.Module) -> dict:
        out: dict = {}
        stack = [unit]
        while stack:
            part = stack.pop()
            for p in part.parameters(recurse=False):
                out[p.dtype] = out.get(p.dtype, 0) + p.numel() * p.element_size()
            stack += [c for c in part.children() if c not in plan]
        return out

    root, llm_rest = own_bytes(module), own_bytes(module.adapter.llama_model)
    assert set(root) == {torch.float32} and root[torch.float32] > 3e9
    assert set(llm_rest) == {torch.float16} and 0.6e9 < llm_rest[torch.float16] < 0.7e9


def test_the_plan_keeps_the_dtype_that_can_be_separated_and_adds_nothing_to_one_dtype():
    from ahamask_lightning.accelerators.ddp import wrap_plan
    from ahamask_lightning.models import SalmonnAdapter
    from ahamask_lightning.module import AHAMaskModule

    def unit_dtypes(module: nn.Module) -> dict[str, set]:
        """The dtypes of each planned unit's own parameters (those outside its nested units)."""
        plan = wrap_plan(module)
        out = {}
        for name, unit in module.named_modules():
            if unit is module or unit in plan:
                dtypes, stack = set(), [unit]
                while stack:
                    part = stack.pop()
                    dtypes |= {p.dtype for p in part.parameters(recurse=False)}
                    stack += [c for c in part.children() if c not in plan]
                out[name] = dtypes
        return out

    one_dtype = AHAMaskModule(SalmonnAdapter(tiny=True))
    assert set(unit_dtypes(one_dtype)) == {"", "head_mask",
                                           *(f"adapter.llama_model.base_model.model.model.layers.{i}" for i in (0, 1))}
    # The connector's own query tokens in fp16: the fp32 root could not separate them, so the root keeps
    # fp16 (with the embeddings and the query tokens), and the fp32 encoders and connector parts go.
    module = salmonn_as_built()
    module.adapter.connector.speech_query_tokens.data = module.adapter.connector.speech_query_tokens.data.half()
    units = unit_dtypes(module)
    assert all(len(dtypes) == 1 for dtypes in units.values()), units
    assert units[""] == {torch.float16} and "adapter.llama_model" not in units and "adapter.connector" not in units
    assert units["adapter.speech_encoder"] == {torch.float32}
    assert sum(n.startswith("adapter.connector.") for n in units) >= 2


def test_a_module_holding_two_dtypes_itself_stops_at_set_up_in_one_line():
    """Whisper's first convolution with an fp32 weight and an fp16 bias: no unit can separate them."""
    from ahamask_lightning.accelerators import MaskFSDPStrategy

    module = salmonn_as_built()
    conv = module.adapter.speech_encoder.conv1
    conv.bias.data = conv.bias.data.half()
    strategy = MaskFSDPStrategy(precision_plugin=FSDPPrecision("16-mixed"))  # SALMONN's (32-true casts all)
    strategy.connect(module)
    with pytest.raises(ValueError) as err:
        strategy.setup(None)  # stops before Lightning's set-up (which would need a trainer)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("MaskFSDPStrategy: adapter.speech_encoder.conv1 (Conv1d) holds parameters of its own "
                          "(weight float32, bias float16)")
    assert "float16/float32 parameters of its FSDP unit" in msg and "cast them to one dtype" in msg


def test_16_true_casts_the_model_before_the_plan_so_no_dtype_unit_is_made(tmp_path):
    """With 16-true Lightning casts the whole model before wrapping: the plan is made after that
    cast, so it has no dtype units left to add."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from ahamask_lightning.accelerators import MaskFSDPStrategy

    module = salmonn_as_built()
    strategy = MaskFSDPStrategy(precision_plugin=FSDPPrecision("16-true"))
    strategy.connect(module)
    strategy.use_model_wrap_policy()
    assert {p.dtype for p in module.parameters()} == {torch.float16}
    with gloo_group(tmp_path / "store", 0, 1):
        wrapped = FSDP(module, device_id=torch.device("cpu"), sharding_strategy=strategy.sharding_strategy,
                       **strategy.kwargs)
        assert sum(isinstance(m, FSDP) for m in wrapped.modules()) == 1 + 2 + 1  # root, 2 layers, head mask


if __name__ == "__main__":  # one rank of test_two_ranks_shard_salmonn_as_built_and_keep_the_gated_loss
    import warnings

    warnings.simplefilter("ignore")
    run_rank(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
