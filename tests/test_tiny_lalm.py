"""TinyLALM: checkpoint round trip, prompt format, batched generation equals one-by-one."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import resolved_config

from ahamask_lightning.models.splice import render_prompt
from ahamask_lightning.models.tiny_lalm import PROMPT_TEMPLATE, TinyLALM, random_tiny_lalm

REPO = Path(__file__).resolve().parents[1]


def _model(skip: bool = False) -> TinyLALM:
    torch.manual_seed(0)
    m = random_tiny_lalm(["the cat sat on the mat", "a dog ran far away", "male female"], layers=2, heads=4,
                         hidden=32, skip=skip)
    for p in m.llm.parameters():  # larger weights so outputs depend on the inputs
        p.data.normal_(0, 0.3)
    return m.freeze()


def test_prompt_keeps_salmonn_spacing_without_instruction():
    assert render_prompt(PROMPT_TEMPLATE, None) == ("USER: <Speech>", "</Speech> \nASSISTANT:")
    assert render_prompt(PROMPT_TEMPLATE, "Transcribe.")[1] == "</Speech> Transcribe.\nASSISTANT:"


@pytest.mark.parametrize("skip", [False, True])
def test_checkpoint_round_trip(tmp_path, skip):
    m = _model(skip)
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


def test_the_front_end_stays_on_the_cpu_when_the_model_moves():
    """Dataloader workers call collate on the CPU: moving the model (to a GPU; here to the meta
    device, which fails the same way for any tensor left in the module tree) must not move the
    log-mel filterbank, or every GPU run fails in its first batch."""
    model = random_tiny_lalm()
    wav = torch.randn(16000)
    before = model.collate([wav], ["hello"], ["world"])["features"]
    model.to("meta")
    assert next(model.llm.parameters()).device.type == "meta"
    after = model.collate([wav], ["hello"], ["world"])["features"]
    assert after.device.type == "cpu" and after.dtype == torch.float32
    assert torch.equal(before, after)


def test_batched_left_padded_generation_equals_one_by_one():
    m = _model()
    audios = [torch.randn(9000) * 0.1, torch.randn(20000) * 0.1, torch.randn(14000) * 0.1]
    instructions = ["what is said", None, "is it a male or a female"]
    together = m.generate(m.collate(audios, instructions), max_new_tokens=6)
    alone = [m.generate(m.collate([a], [i]), max_new_tokens=6)[0] for a, i in zip(audios, instructions)]
    assert together == alone
    assert len(set(alone)) > 1  # the inputs matter


@pytest.mark.parametrize("samples", [16000, 16640, 16960, 17920, 18240])
def test_a_clips_audio_tokens_do_not_depend_on_the_clips_padded_beside_it(samples):
    """The second stride-2 convolution's last window reads one position past the first one's
    output: that position must be zero in a padded batch, as it is for the clip alone (whatever the
    parity of the clip's length)."""
    m = TinyLALM(checkpoint=str(REPO / "checkpoints" / "tiny_lalm_8x16g"))
    gen = torch.Generator().manual_seed(samples)
    clip, longer = (m.frontend(torch.randn(n, generator=gen) * 0.1) for n in (samples, 64000))
    alone, n_alone = m.audio_encoder(clip[None], torch.tensor([clip.shape[0]]))
    padded = torch.nn.utils.rnn.pad_sequence([clip, longer], batch_first=True)
    both, n_both = m.audio_encoder(padded, torch.tensor([clip.shape[0], longer.shape[0]]))
    k = int(n_alone[0])
    assert int(n_both[0]) == k
    torch.testing.assert_close(both[0, :k], alone[0, :k], atol=1e-3, rtol=1e-3)


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


def test_skip_path_feeds_the_convolution_features_to_the_projector():
    m = _model(skip=True)
    assert m.audio_encoder.proj[0].in_features == 2 * 32 * m.config.stack
    feats = torch.randn(1, 40, m.config.n_mels)
    lens = torch.tensor([40])
    x, conv, enc_lens = m.audio_encoder.encode(feats, lens)
    with torch.no_grad():
        a, _ = m.audio_encoder.project(x, conv, enc_lens)
        b, _ = m.audio_encoder.project(x, conv + 1.0, enc_lens)
    assert not torch.allclose(a, b)  # the projector reads the convolution features directly


# a pretraining TinyLALM small enough to build in a test
_TINY_PRETRAIN = {"enc_dim": 32, "enc_layers": 1, "enc_heads": 2, "skip": True, "llm": {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 2, "max_position_embeddings": 256}}


def test_pretraining_ctc_targets_cover_every_speech_task(tmp_path):
    import json

    from ahamask_lightning.pretrain import PretrainCollate, TinyLALMPretrain

    lines = [{"id": f"{t}-u1", "audio": "a.wav", "task": t, "text": y, "meta": {"utt": "u1"}}
             for t, y in [("asr", "the cat sat"), ("gr", "Male"), ("src", "slow")]]
    manifest = tmp_path / "asr.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    module = TinyLALMPretrain([str(manifest)], vocab_size=120, ctc_weight=0.5, config=_TINY_PRETRAIN)
    assert module.transcripts == {"u1": "the cat sat"}
    collate = PretrainCollate(module.adapter, "random", 0)
    samples = [{**x, "audio": torch.randn(16000) * 0.1} for x in lines]
    batch = collate(samples)
    assert batch["utts"] == ["u1", "u1", "u1"]
    enc = module.adapter.audio_encoder
    hidden, _, lens = enc.encode(batch["features"], batch["feature_lens"])
    ctc = module.ctc_loss(hidden, lens, batch["utts"])
    assert ctc is not None and torch.isfinite(ctc) and ctc > 0
    assert module.ctc_loss(hidden, lens, [None, ["u1", "u1"], None]) is None  # ASV pairs carry no transcript


def test_instruction_free_examples_can_be_trained_to_stay_silent(tmp_path):
    """With instruction_free_target "", a dropped instruction trains EOS alone, whatever the task;
    without it the example keeps its own target (that task becomes the instruction-free default)."""
    from ahamask_lightning.pretrain import PretrainCollate, TinyLALMPretrain

    manifest, lines = _speaker_manifest(tmp_path)
    module = TinyLALMPretrain([str(manifest)], vocab_size=120, config=_TINY_PRETRAIN)
    samples = [{**x, "audio": torch.randn(16000) * 0.1, "stage": "train"} for x in lines[:2]] + [
        {"id": "gr-0", "audio": torch.randn(16000) * 0.1, "task": "gr", "text": "Male", "meta": {}, "stage": "train"}]
    eos, pad = module.adapter.tokenizer.eos_token_id, module.adapter.tokenizer.pad_token_id
    silent = PretrainCollate(module.adapter, "random", 0, {"asr": 1.0, "gr": 1.0}, "")(samples)
    assert silent["instructions"] == [None, None, None] and silent["texts"] == ["", "", ""]
    assert silent["target_lens"].tolist() == [1, 1, 1] and (silent["target_ids"][:, 0] == eos).all()
    default = PretrainCollate(module.adapter, "random", 0, {"asr": 1.0})(samples)
    assert default["instructions"][:2] == [None, None] and default["instructions"][2] is not None
    assert default["texts"] == ["the cat sat", "a dog ran", "Male"]
    assert (default["target_lens"] > 1).all() and pad not in default["target_ids"][0, :2].tolist()
    # validation keeps every instruction: its metrics measure the tasks as asked
    asked = PretrainCollate(module.adapter, "random", 0, {"asr": 1.0, "gr": 1.0}, "")(
        [{**x, "stage": "val"} for x in samples])
    assert None not in asked["instructions"] and asked["texts"] == ["the cat sat", "a dog ran", "Male"]


def _speaker_manifest(tmp_path):
    import json

    lines = [{"id": f"asr-{u}", "audio": "a.wav", "task": "asr", "text": t, "meta": {"utt": u, "speaker": s}}
             for u, t, s in [("u1", "the cat sat", "en+m1@p50"), ("u2", "a dog ran", "en+f2@p55")]]
    lines.append({"id": "asv-0", "audio": ["a.wav", "b.wav"], "task": "asv", "text": "No",
                  "meta": {"utt": ["u1", "u2"], "speaker": ["en+m1@p50", "en+f2@p55"], "durations": [1.0, 0.8]}})
    manifest = tmp_path / "asr.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return manifest, lines


def test_pretraining_speaker_and_pair_losses_pool_the_right_frames(tmp_path):
    from ahamask_lightning.pretrain import PretrainCollate, TinyLALMPretrain

    manifest, lines = _speaker_manifest(tmp_path)
    module = TinyLALMPretrain([str(manifest)], vocab_size=120, speaker_weight=0.5, pair_weight=0.5,
                              config=_TINY_PRETRAIN)
    assert module.speakers == {"en+f2@p55": 0, "en+m1@p50": 1}
    collate = PretrainCollate(module.adapter, "random", 0)
    audio = [torch.randn(16000) * 0.1, torch.randn(12000) * 0.1, torch.randn(16000 + 1600 + 12800) * 0.1]
    batch = collate([{**x, "audio": a} for x, a in zip(lines, audio)])
    assert batch["segments"][0] == [("en+m1@p50", 0.0, float("inf"))]
    assert batch["segments"][2] == [("en+m1@p50", 0.0, 1.0), ("en+f2@p55", 1.1, float("inf"))]  # 0.1 s gap
    hidden, _, lens = module.adapter.audio_encoder.encode(batch["features"], batch["feature_lens"])
    loss = module.speaker_loss(hidden, lens, batch["segments"])
    assert loss is not None and torch.isfinite(loss) and loss > 0
    loss.backward()  # the gradient reaches the encoder, which is the point of the loss
    assert module.adapter.audio_encoder.encoder.layers[0].linear1.weight.grad.abs().sum() > 0
    assert module.speaker_loss(hidden, lens, [[], [], [("unseen", 0.0, float("inf"))]]) is None
    pair = module.pair_loss(hidden.detach(), lens, batch["segments"])  # only the pair clip counts
    logits = module.pair_head(hidden[2, : int(lens[2])].detach().mean(0)).float()
    assert torch.allclose(pair, torch.nn.functional.cross_entropy(logits[None], torch.tensor([0])))  # No
    assert module.pair_loss(hidden, lens, batch["segments"][:2]) is None


def test_stage_two_starts_from_stage_one_and_exports_a_loadable_checkpoint(tmp_path):
    from ahamask_lightning.pretrain import TinyLALMPretrain, export_checkpoint

    manifest, _ = _speaker_manifest(tmp_path)
    stage1 = TinyLALMPretrain([str(manifest)], vocab_size=120, ctc_weight=0.3, config=_TINY_PRETRAIN, seed=1)
    ckpt = tmp_path / "last.ckpt"  # the two keys of a Lightning checkpoint that stage 2 and export read
    torch.save({"state_dict": stage1.state_dict(), "hyper_parameters": dict(stage1.hparams)}, ckpt)
    stage2 = TinyLALMPretrain([str(manifest)], vocab_size=120, ctc_weight=0.3, speaker_weight=0.3,
                              config=_TINY_PRETRAIN, seed=2, init_from=str(ckpt))
    started = stage2.state_dict()
    for name, a in stage1.state_dict().items():
        assert torch.equal(a, started[name]), name
    assert stage2.speaker_head is not None  # new in stage 2, so it starts random
    torch.save({"state_dict": stage2.state_dict(), "hyper_parameters": dict(stage2.hparams)}, ckpt)
    loaded = TinyLALM(checkpoint=str(export_checkpoint(str(ckpt), str(tmp_path / "out"))))
    for name, p in stage2.adapter.llm.state_dict().items():
        assert torch.allclose(loaded.llm.state_dict()[name].float(), p.half().float()), name  # fp16 on disk

    other = TinyLALMPretrain([str(manifest)], vocab_size=120, config={**_TINY_PRETRAIN, "enc_dim": 16})
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams)}, ckpt)
    with pytest.raises(ValueError, match="shape mismatch"):
        TinyLALMPretrain([str(manifest)], vocab_size=120, config=_TINY_PRETRAIN, init_from=str(ckpt))


def test_a_later_stage_drops_switched_off_heads_or_starts_from_an_exported_checkpoint(tmp_path):
    import json

    from ahamask_lightning.pretrain import TinyLALMPretrain

    manifest, lines = _speaker_manifest(tmp_path)
    trained = TinyLALMPretrain([str(manifest)], vocab_size=120, ctc_weight=0.3, pair_weight=0.3,
                               config=_TINY_PRETRAIN, seed=1)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams)}, ckpt)
    lm_only = TinyLALMPretrain([str(manifest)], vocab_size=120, config=_TINY_PRETRAIN, seed=2, init_from=str(ckpt))
    assert lm_only.ctc_head is None and lm_only.pair_head is None
    for name, p in trained.adapter.state_dict().items():
        assert torch.equal(p, lm_only.adapter.state_dict()[name]), name

    trained.adapter.save(tmp_path / "exported")
    from_dir = TinyLALMPretrain([str(manifest)], vocab_size=120, ctc_weight=0.3, config=_TINY_PRETRAIN, seed=3,
                                init_from=str(tmp_path / "exported"))
    for name, p in trained.adapter.llm.state_dict().items():
        assert torch.equal(from_dir.adapter.llm.state_dict()[name], p.half().float()), name  # fp16 on disk
    assert from_dir.ctc_head is not None  # not in an exported checkpoint: starts random

    other = tmp_path / "other.jsonl"  # another corpus builds another tokenizer
    other.write_text(json.dumps({**lines[0], "text": "zebras quietly vanish"}) + "\n")
    with pytest.raises(ValueError, match="tokenizer.json: differs"):
        TinyLALMPretrain([str(other)], vocab_size=120, config=_TINY_PRETRAIN, init_from=str(tmp_path / "exported"))
    with pytest.raises(ValueError, match="config.json: differs"):
        TinyLALMPretrain([str(manifest)], vocab_size=120, config={**_TINY_PRETRAIN, "enc_layers": 2},
                         init_from=str(tmp_path / "exported"))


def test_grow_from_a_smaller_llm_copies_what_fits_and_adds_identity_layers(tmp_path):
    from ahamask_lightning.pretrain import TinyLALMPretrain

    manifest, _ = _speaker_manifest(tmp_path)
    small = TinyLALMPretrain([str(manifest)], vocab_size=120, config=_TINY_PRETRAIN, seed=1)
    for p in small.adapter.llm.parameters():  # larger weights so the outputs depend on every layer
        p.data.normal_(0, 0.3)
    small.adapter.save(tmp_path / "small")
    small = TinyLALM(str(tmp_path / "small"))
    deeper = {**_TINY_PRETRAIN, "llm": {**_TINY_PRETRAIN["llm"], "num_hidden_layers": 2}}
    grown = TinyLALMPretrain([str(manifest)], vocab_size=120, config=deeper, seed=2, grow_from=str(tmp_path / "small"))
    # more layers of the same heads: the added layer is an identity, so the model computes the same
    batch = small.collate([torch.randn(16000) * 0.1], [None], ["the cat"])
    small.eval(), grown.adapter.eval()
    assert torch.allclose(grown.adapter.loss(batch), small.loss(batch), atol=1e-5)
    assert grown.grown["new"] > 0 and not grown.adapter.llm.model.layers[1].mlp.down_proj.weight.any()

    wider = {**deeper, "llm": {**deeper["llm"], "num_attention_heads": 4, "num_key_value_heads": 4}}
    frozen = TinyLALMPretrain([str(manifest)], vocab_size=120, config=wider, grow_from=str(tmp_path / "small"),
                              freeze_encoder=True)
    layer0 = frozen.adapter.llm.model.layers[0].self_attn.q_proj.weight  # 2 heads of 16 read as 4 of 8
    assert torch.equal(layer0, small.llm.model.layers[0].self_attn.q_proj.weight)
    enc = frozen.adapter.audio_encoder
    assert not any(p.requires_grad for p in enc.encoder.parameters()) and all(p.requires_grad for p in enc.proj.parameters())

    narrow = {**deeper, "llm": {**deeper["llm"], "hidden_size": 16, "intermediate_size": 32}}
    with pytest.raises(ValueError, match="small/config.json: grow_from needs the same encoder and LLM hidden size"):
        TinyLALMPretrain([str(manifest)], vocab_size=120, config=narrow, grow_from=str(tmp_path / "small"))


def test_stacked_growth_copies_every_new_layer_from_a_trained_one(tmp_path):
    from ahamask_lightning.pretrain import TinyLALMPretrain, stacked_layers

    assert stacked_layers(8, 12) == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7]  # SOLAR-style overlap in the middle
    assert stacked_layers(1, 2) == [0, 0] and stacked_layers(3, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="at most 6"):
        stacked_layers(3, 7)
    manifest, _ = _speaker_manifest(tmp_path)
    small = TinyLALMPretrain([str(manifest)], vocab_size=120, config=_TINY_PRETRAIN, seed=1)
    small.adapter.save(tmp_path / "small")
    small = TinyLALM(str(tmp_path / "small"))
    deeper = {**_TINY_PRETRAIN, "llm": {**_TINY_PRETRAIN["llm"], "num_hidden_layers": 2}}
    grown = TinyLALMPretrain([str(manifest)], vocab_size=120, config=deeper, seed=2, grow_from=str(tmp_path / "small"),
                             grow_layers="stack")
    old = small.llm.model.layers[0].state_dict()
    for layer in grown.adapter.llm.model.layers:  # both copies of layer 0, output projections included
        assert all(torch.equal(v, old[k]) for k, v in layer.state_dict().items())
    a, b = (grown.adapter.llm.model.layers[i].self_attn.o_proj.weight for i in (0, 1))
    assert a.data_ptr() != b.data_ptr()  # copies, not one tensor trained twice
    with pytest.raises(ValueError, match="grow_layers"):
        TinyLALMPretrain([str(manifest)], vocab_size=120, config=deeper, grow_layers="mirror")


def test_the_committed_enlarged_testbed_is_the_grown_recipe():
    """checkpoints/tiny_lalm_8x16g is what experiments/pretrain_tiny_lalm_8x16_grown.yaml writes."""

    import yaml

    recipe = yaml.safe_load((REPO / "experiments" / "pretrain_tiny_lalm_8x16_grown.yaml").read_text())
    grown = TinyLALM(str(REPO / "checkpoints" / "tiny_lalm_8x16g"))
    small = TinyLALM(str(REPO / "checkpoints" / "tiny_lalm"))
    assert grown.config.llm == recipe["model"]["init_args"]["config"]["llm"]
    assert len(grown.gated_attentions()) * grown.num_heads == 128
    assert grown.tokenizer.get_vocab() == small.tokenizer.get_vocab()
    # the encoder was frozen while the LLM grew: it is stage 6's, to the fp16 bit
    for name, p in small.audio_encoder.state_dict().items():
        if not name.startswith("proj."):
            assert torch.equal(p, grown.audio_encoder.state_dict()[name]), name


RECIPES = ["6x8", "8x16g", "8x32g", "12x32g", "12x32s", "16x32s", "12x32s_if", "16x32_gpu", "16x32_gpu_cpu",
           "16x32_silent"]


def _make_testbed(recipe: str) -> str:
    """The commands `make testbed RECIPE=...` would run (a dry run: nothing is trained)."""
    import shutil
    import subprocess

    if not shutil.which("make"):
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "testbed", f"RECIPE={recipe}"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return "\n".join(line for line in out.stdout.splitlines() if " fit --config " in line)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_testbed_recipe_writes_the_model_its_card_describes(recipe: str):
    """`make testbed RECIPE=r` trains into checkpoints/tiny_lalm_<r> (6x8: tiny_lalm) with the LLM shape
    recorded in that testbed's config.json (kept in checkpoints/ or, for the testbeds that left the
    tree, in docs/testbeds/), and docs/testbed.md names the recipe."""
    import json
    import re
    import shlex

    name = "tiny_lalm" if recipe == "6x8" else f"tiny_lalm_{recipe}"
    commands = _make_testbed(recipe)
    assert commands, f"make testbed RECIPE={recipe} runs no ahamask fit"
    argv = shlex.split(commands.splitlines()[-1])[1:]  # the last fit writes the testbed
    flags = {tok: argv[i + 1] for i, tok in enumerate(argv[:-1]) if tok.startswith("--")}
    out_dir, llm = flags.get("--model.init_args.out_dir"), flags.get("--model.init_args.config.llm")
    if out_dir is None or llm is None:  # the YAML says: ask the CLI what it resolves to
        model = resolved_config(argv)["model"]["init_args"]
        out_dir, llm = model["out_dir"], model["config"]["llm"]
    else:
        llm = json.loads(llm)
    assert out_dir == f"checkpoints/{name}"
    card_dir = REPO / "checkpoints" / name if (REPO / "checkpoints" / name).is_dir() else REPO / "docs/testbeds" / name
    recorded = json.loads((card_dir / "config.json").read_text())["llm"]
    assert llm == recorded, f"{card_dir}/config.json"
    assert (card_dir / "MODEL_CARD.md").is_file()
    assert re.search(rf"RECIPE={re.escape(recipe)}\b", (REPO / "docs" / "testbed.md").read_text())
