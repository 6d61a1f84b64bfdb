"""SALMONN against the official code (transformers 4.28, sentencepiece): tokenizer, beam search, YAMLs.

1. The tokenizer: a tiny sentencepiece model with Llama's settings (byte fallback, dummy prefix, no
   whitespace folding) is trained here; the official rules are spelled out per case in terms of
   sentencepiece itself, and transformers 5's tokenizers-backed LlamaTokenizer is shown to break them.
2. Beam search: on tiny random Llamas, ``official_beam_search`` equals a plain cache-free rewrite of
   4.28's algorithm written here, and on a case where EOS competes with length it picks another beam
   than transformers 5's ``generate``; scoring both picks by brute force shows the length rule is why.
3. The ``*_salmonn_official.yaml`` experiments: the released code's settings, beside unchanged
   paper-faithful ones.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import parse_only_parser, resolved_config

from ahamask_lightning.models.salmonn import SalmonnAdapter
from ahamask_lightning.models.salmonn import model as salmonn_model
from ahamask_lightning.models.salmonn.generation import official_beam_search
from ahamask_lightning.models.salmonn.tokenizer import SalmonnLlamaTokenizer, load_salmonn_tokenizer
from ahamask_lightning.models.splice import tokenize_prompts

spm = pytest.importorskip("sentencepiece")
REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
PAPER_TASKS = ("asr", "gr", "ser", "asv", "aac", "s2tt", "osr", "gr_asr", "asr_gr", "json")
BYTE = 3  # byte-fallback piece <0xNN> has id 3 + NN after <unk>, <s>, </s>
NIHAO = "你好".encode()  # 6 bytes, none of them in the vocabulary below: byte-fallback pieces


# --- 1. tokenizer ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> Path:
    """A tiny sentencepiece model trained with Llama's trainer settings, in an HF-style directory."""
    out = tmp_path_factory.mktemp("spm")
    corpus = ["the quick brown fox jumps over the lazy dog", "USER: <Speech><SpeechHere></Speech> describe the audio",
              "ASSISTANT: male female yes no", "recognize the speech and give me the transcription",
              "hello world, this is a test of leading   spaces"] * 20
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(out / "tokenizer"), vocab_size=300, model_type="bpe",
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0, num_threads=1, minloglevel=2)
    (out / "tokenizer.vocab").unlink()
    return out


@pytest.fixture(scope="module")
def sp(vocab_dir) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(vocab_dir / "tokenizer.model"))


@pytest.fixture(scope="module")
def official(vocab_dir) -> SalmonnLlamaTokenizer:
    return load_salmonn_tokenizer(str(vocab_dir))


@pytest.fixture(scope="module")
def fast(vocab_dir):
    """What ``AutoTokenizer`` gives on transformers 5: the tokenizers-backed Llama tokenizer."""
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(str(vocab_dir))
    tok.add_special_tokens({"pad_token": "[PAD]"})
    assert "sentencepiece" not in type(tok).__mro__[1].__module__
    return tok


def test_ids_and_pad_as_salmonn_sets_them(official, sp) -> None:
    assert (official.unk_token_id, official.bos_token_id, official.eos_token_id) == (0, 1, 2)
    assert official.pad_token == "[PAD]" and official.pad_token_id == sp.get_piece_size() == len(official) - 1
    assert official.padding_side == "right"
    assert sp.encode("你", out_type=str)[1:] == ["<0xE4>", "<0xBD>", "<0xA0>"]  # byte fallback in this vocabulary


def test_leading_spaces_keep_the_dummy_prefix(official, fast, sp) -> None:
    for text in (" hello", "  two spaces", " ", " 你好", "hello world"):
        want = sp.encode(text)  # dummy prefix always added: " hello" -> ▁ ▁hello
        assert official.encode(text, add_special_tokens=False) == want, text
        assert official.encode(text) == [1, *want]
    assert sp.encode(" hello", out_type=str)[:2] == ["▁", "▁"]
    assert fast.encode(" hello", add_special_tokens=False) == sp.encode("hello")  # one ▁ fewer


def test_text_after_special_tokens_gets_its_own_prefix(official, fast, sp) -> None:
    cases = {"</s>hello": [2, *sp.encode("hello")], "<s>x": [1, *sp.encode("x")],
             "a</s> b": [*sp.encode("a"), 2, *sp.encode(" b")], "male</s>": [*sp.encode("male"), 2],
             "x </s> y": [*sp.encode("x "), 2, *sp.encode(" y")]}
    for text, want in cases.items():
        assert official.encode(text, add_special_tokens=False) == want, text
    assert fast.encode("</s>hello", add_special_tokens=False) != cases["</s>hello"]
    assert fast.encode("a</s> b", add_special_tokens=False) != cases["a</s> b"]


def test_added_pad_token_strips_its_neighbours_like_4_28(official, sp) -> None:
    # 4.28 stripped whitespace around tokens added as plain strings (SALMONN's "[PAD]"), not around <s>/</s>
    assert official.tokenize("a [PAD] b") == [*sp.encode("a", out_type=str), "[PAD]", *sp.encode("b", out_type=str)]
    assert official.tokenize("[PAD]x") == ["[PAD]", *sp.encode("x", out_type=str)]


def test_byte_fallback_decoding_keeps_valid_neighbours(official, fast, sp) -> None:
    b = [BYTE + x for x in NIHAO]
    cases = [b, b[:-1], b[:-2], b[1:], b[:2] + [2] + b[2:3]]
    for ids in cases:
        assert official.decode(ids, skip_special_tokens=True) == sp.decode([i for i in ids if i != 2])
    assert official.decode(b[:-1]) == "你\ufffd\ufffd"  # the valid character stays, one U+FFFD per bad byte
    assert official.decode(b[1:]) == "\ufffd\ufffd好"
    assert fast.decode(b[:-1]) == "\ufffd" * 5  # the whole run is lost
    assert official.batch_decode([b, b[:-1]], skip_special_tokens=True) == ["你好", "你\ufffd\ufffd"]


def test_decoding_special_tokens_like_4_28(official, fast, sp) -> None:
    hello = sp.encode("hello world")
    assert official.decode([1, *hello]) == "<s>hello world"  # no space after a leading special token
    assert fast.decode([1, *hello]) == "<s> hello world"
    assert official.decode([*sp.encode("male"), 2]) == " male</s>"  # a space before text that a special ends
    assert official.decode([1, *[BYTE + x for x in NIHAO[:3]], 2]) == "<s> 你</s>"
    pad = official.pad_token_id
    assert official.decode([1, pad, 2]) == "<s> [PAD] </s>"  # added tokens joined with spaces
    assert official.decode([1, *hello, 2, pad], skip_special_tokens=True) == "hello world"


def test_salmonn_prompts_and_targets_tokenise_as_sentencepiece(official, sp) -> None:
    template = "USER: <Speech><SpeechHere></Speech> {}\nASSISTANT:"
    batch = tokenize_prompts(official, template, [None, "describe the audio"], ["Male", " leading"], 1, 2,
                             official.pad_token_id)
    assert batch["prefix_ids"][0, : batch["prefix_lens"][0]].tolist() == [1, *sp.encode("USER: <Speech>")]
    assert batch["suffix_ids"][0, : batch["suffix_lens"][0]].tolist() == sp.encode("</Speech> \nASSISTANT:")
    assert batch["suffix_ids"][1, : batch["suffix_lens"][1]].tolist() == sp.encode(
        "</Speech> describe the audio\nASSISTANT:")
    # the official target text + "</s>", tokenised in one go, gives the same ids as text ids + EOS
    for i, text in enumerate(["Male", " leading"]):
        assert batch["target_ids"][i, : batch["target_lens"][i]].tolist() == official.encode(
            text + "</s>", add_special_tokens=False) == [*sp.encode(text), 2]


def test_tokenizer_survives_pickle_and_save(official, tmp_path) -> None:
    import pickle

    text = " hello [PAD] x</s>"
    assert pickle.loads(pickle.dumps(official)).encode(text) == official.encode(text)
    official.save_pretrained(tmp_path)
    again = SalmonnLlamaTokenizer.from_pretrained(str(tmp_path))
    assert again.encode(text) == official.encode(text) and again.pad_token_id == official.pad_token_id
    assert load_salmonn_tokenizer(str(tmp_path / "tokenizer.model")).encode(text) == official.encode(text)


def test_adapter_loads_the_official_tokenizer_from_the_llm_directory(vocab_dir, tmp_path, monkeypatch) -> None:
    """``tokenizer: official`` (default) reads tokenizer.model; without one it says what to do."""
    seen = {}

    class Stop(Exception):
        pass

    def stop(tok):  # the tokenizer is the first thing _build_real loads: stop there
        seen["tok"] = tok
        raise Stop

    monkeypatch.setattr(salmonn_model, "load_salmonn_tokenizer",
                        lambda p: stop(load_salmonn_tokenizer(p)))
    adapter = SalmonnAdapter.__new__(SalmonnAdapter)
    adapter.tokenizer_rule = "official"
    with pytest.raises(Stop):
        SalmonnAdapter._build_real(adapter, "13b", None, {"llm_path": str(vocab_dir)}, torch.float32, "sdpa")
    assert isinstance(seen["tok"], SalmonnLlamaTokenizer) and seen["tok"].pad_token == "[PAD]"
    with pytest.raises(RuntimeError, match="tokenizer: transformers"):
        SalmonnAdapter._build_real(adapter, "13b", None, {"llm_path": str(tmp_path)}, torch.float32, "sdpa")
    with pytest.raises(ValueError, match="beam_search"):
        SalmonnAdapter(tiny=True, beam_search="hf")


# --- 2. beam search ----------------------------------------------------------------------------------
EOS, PAD, BOS, VOCAB, HIDDEN = 2, 0, 1, 16, 32


def tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # peakier distributions and an EOS that is sometimes likely: EOS vs length
        model.lm_head.weight.mul_(8.0)
        model.lm_head.weight[EOS] += 2.0 * torch.randn(HIDDEN)
    return model, torch.randn(1, 5, HIDDEN)


@torch.no_grad()
def sequence_logprob(model, prompt: torch.Tensor, tokens: list[int]) -> float:
    """log p(tokens | prompt) from one full forward (no cache)."""
    embeds = torch.cat([prompt, model.get_input_embeddings()(torch.tensor([tokens]))], dim=1)
    logp = torch.log_softmax(model(inputs_embeds=embeds).logits[0].float(), dim=-1)
    n = prompt.shape[1]
    return float(sum(logp[n - 1 + i, t] for i, t in enumerate(tokens)))


@torch.no_grad()
def reference_beam_search_428(model, prompt: torch.Tensor, num_beams: int, max_new: int,
                              length_penalty: float = 1.0) -> list[int]:
    """transformers 4.28's beam search for one prompt (early_stopping=False), written plainly: full
    forwards, Python lists. A hypothesis is scored by its log-probability over the length of 4.28's
    sequence, i.e. the BOS placeholder column plus the tokens before EOS (or all tokens when cut)."""
    running = [([], 0.0)] + [([], -1e9)] * (num_beams - 1)
    finished: list[tuple[float, list[int]]] = []

    def add(tokens: list[int], logprob: float) -> None:
        finished.append(((logprob / (1 + len(tokens)) ** length_penalty), tokens))
        finished.sort(key=lambda x: x[0], reverse=True)
        del finished[num_beams:]

    for step in range(max_new):
        candidates = []
        for tokens, score in running:
            embeds = torch.cat([prompt, model.get_input_embeddings()(torch.tensor([tokens], dtype=torch.long))], 1)
            logp = torch.log_softmax(model(inputs_embeds=embeds).logits[0, -1].float(), dim=-1)
            candidates += [(score + float(logp[t]), tokens, t) for t in range(VOCAB)]
        candidates = sorted(candidates, key=lambda c: c[0], reverse=True)[: 2 * num_beams]
        running = []
        for rank, (score, tokens, t) in enumerate(candidates):
            if t == EOS:
                if rank < num_beams:
                    add(tokens, score)
            else:
                running.append((tokens + [t], score))
            if len(running) == num_beams:
                break
        # 4.28's BeamHypotheses.is_done: the best candidate (EOS ones included) over the sequence length
        # after this step, placeholder column included: 1 + step + 1
        best_candidate = candidates[0][0]
        if len(finished) == num_beams and finished[-1][0] >= best_candidate / (step + 2) ** length_penalty:
            return finished[0][1] + [EOS]
    for tokens, score in running:
        add(tokens, score)
    best = finished[0][1]
    return best + ([EOS] if len(best) < max_new else [])


def ends(ids: list[int]) -> list[int]:
    """Tokens up to and including the first EOS (later positions are padding)."""
    return ids[: ids.index(EOS) + 1] if EOS in ids else ids


def test_official_rule_matches_4_28_and_differs_from_transformers_where_eos_competes_with_length() -> None:
    max_new, k = 6, 4
    settings = {"num_beams": k, "max_new_tokens": max_new, "length_penalty": 1.0, "do_sample": False,
                "min_length": 1, "eos_token_id": EOS, "pad_token_id": PAD, "bos_token_id": BOS}
    differing = None
    for seed in range(40):
        model, prompt = tiny_llama(seed)
        mask = torch.ones(1, prompt.shape[1], dtype=torch.long)
        ours = ends(official_beam_search(model, prompt, mask, **settings)[0].tolist())
        assert ours == reference_beam_search_428(model, prompt, k, max_new), seed
        theirs = ends(model.generate(inputs_embeds=prompt, attention_mask=mask, **settings)[0].tolist())
        if ours != theirs and (ours[-1] == EOS) != (theirs[-1] == EOS):
            differing = (model, prompt, ours, theirs)
            break
    assert differing is not None, "no seed where the two rules pick different beams"
    model, prompt, ours, theirs = differing

    def score(ids: list[int], rule: str) -> float:
        """Brute force: the sequence's log-probability (EOS included) over each rule's length."""
        n_before_eos = len(ids) - 1 if ids[-1] == EOS else len(ids)
        if rule == "4.28":  # BOS placeholder column + tokens before EOS
            length = 1 + n_before_eos
        else:  # transformers 5: generated tokens, EOS included
            length = len(ids)
        return sequence_logprob(model, prompt, ids) / length

    # each rule prefers its own pick: the length rule, not the search, makes the difference
    assert score(ours, "4.28") > score(theirs, "4.28")
    assert score(theirs, "5") > score(ours, "5")


def test_official_rule_batches_like_single_prompts_with_left_padding() -> None:
    model, _ = tiny_llama(9)
    torch.manual_seed(1)
    prompts = torch.randn(3, 5, HIDDEN)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, :2] = 0
    mask[2, :1] = 0
    prompts = prompts * mask[..., None]
    settings = {"num_beams": 4, "max_new_tokens": 8, "eos_token_id": EOS, "pad_token_id": PAD, "bos_token_id": BOS}
    batched = official_beam_search(model, prompts, mask, **settings)
    for i in range(3):
        keep = mask[i].bool()
        alone = official_beam_search(model, prompts[i:i + 1, keep], mask[i:i + 1, keep], **settings)
        assert ends(batched[i].tolist()) == ends(alone[0].tolist()), i
    two = official_beam_search(model, prompts, mask, num_return_sequences=2, **settings)
    assert two.shape[0] == 6 and ends(two[0].tolist()) == ends(batched[0].tolist())


def test_official_rule_rejects_what_4_28_beam_search_would_not_do() -> None:
    model, prompt = tiny_llama(0)
    mask = torch.ones(1, prompt.shape[1], dtype=torch.long)
    ids = {"eos_token_id": EOS, "pad_token_id": PAD, "bos_token_id": BOS}
    with pytest.raises(ValueError, match="do_sample"):
        official_beam_search(model, prompt, mask, do_sample=True, **ids)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        official_beam_search(model, prompt, mask, no_repeat_ngram_size=2, **ids)
    # the official decode config's sampling settings have no effect on 4.28's beam search
    plain = official_beam_search(model, prompt, mask, max_new_tokens=5, **ids)
    assert torch.equal(plain, official_beam_search(model, prompt, mask, max_new_tokens=5, temperature=0.7,
                                                   top_p=0.9, **ids))


def test_adapter_decodes_with_the_chosen_rule(monkeypatch) -> None:
    from ahamask_lightning.models.salmonn import generation

    torch.manual_seed(0)
    tiny = SalmonnAdapter(variant="tiny")
    assert tiny.beam_search == "official" and tiny.describe()["beam_search"] == "official"
    calls = []
    real = generation.official_beam_search
    monkeypatch.setattr(salmonn_model, "official_beam_search", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    wav = [0.1 * torch.randn(16000), 0.1 * torch.randn(24000)]
    batch = tiny.collate(wav, [None, "describe the audio"])
    out = tiny.generate(batch, num_beams=4, max_new_tokens=3)
    assert len(out) == 2 and all(isinstance(t, str) for t in out) and len(calls) == 1
    assert calls[0]["num_beams"] == 4 and calls[0]["length_penalty"] == 1.0
    tiny.generate(batch, num_beams=1, max_new_tokens=3)  # greedy: transformers' generate, same rule
    tiny.beam_search = "transformers"
    tiny.generate(batch, num_beams=4, max_new_tokens=3)
    assert len(calls) == 1


# --- 3. YAMLs ----------------------------------------------------------------------------------------
OFFICIAL_KEYS = {("model", "estimator"): ("logistic", "official"), ("model", "per_sample_mask"): (False, True),
                 ("temperature", "preset"): ("paper", "official"), ("adapter", "beam_search"): (None, "official"),
                 ("adapter", "tokenizer"): (None, "official")}


def _settings(cfg: dict) -> dict:
    m = cfg["model"]["init_args"]
    temp = next(c["init_args"] for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("TemperatureAnnealing"))
    adapter = m["model"]["init_args"]
    return {("model", "estimator"): m["estimator"], ("model", "per_sample_mask"): m["per_sample_mask"],
            ("temperature", "preset"): temp["preset"], ("adapter", "beam_search"): adapter.get("beam_search"),
            ("adapter", "tokenizer"): adapter.get("tokenizer")}


def test_print_config_shows_the_released_codes_settings() -> None:
    """``ahamask fit --config experiments/gr_salmonn_official.yaml --print_config``, as a user runs it."""
    official = resolved_config(["fit", "--config", str(EXPERIMENTS / "gr_salmonn_official.yaml")])
    parser = parse_only_parser(EXPERIMENTS / "gr_salmonn_official.yaml")
    paper = parser.parse_args(["--config", str(EXPERIMENTS / "gr_salmonn.yaml")]).as_dict()
    assert _settings(official) == {k: v[1] for k, v in OFFICIAL_KEYS.items()}
    assert official["trainer"]["default_root_dir"] == "runs/salmonn_official/gr"
    assert _settings(paper)[("model", "estimator")] == "logistic" and not _settings(paper)[("model", "per_sample_mask")]
    assert _settings(paper)[("temperature", "preset")] == "paper"
    # the adapter's defaults are the official tokenizer and beam rule, for the paper-faithful YAML too
    assert _settings(paper)[("adapter", "beam_search")] == _settings(paper)[("adapter", "tokenizer")] == "official"


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_each_paper_yaml_has_an_official_twin_differing_only_in_the_released_settings(task: str) -> None:
    """Parsed with the CLI's parser: the same experiment but for the keys the released code sets otherwise
    (and its run directory)."""
    paper_path, official_path = EXPERIMENTS / f"{task}_salmonn.yaml", EXPERIMENTS / f"{task}_salmonn_official.yaml"
    assert official_path.is_file()
    parser = parse_only_parser(EXPERIMENTS / "gr_salmonn_official.yaml")
    paper = parser.parse_args(["--config", str(paper_path)]).as_dict()
    official = parser.parse_args(["--config", str(official_path)]).as_dict()
    assert _settings(official) == {k: v[1] for k, v in OFFICIAL_KEYS.items()}
    assert official["trainer"]["default_root_dir"] == f"runs/salmonn_official/{task}"
    for cfg in (paper, official):  # blank out what may differ; the rest must be equal
        cfg.pop("config", None)
        cfg["trainer"]["default_root_dir"] = None
        m = cfg["model"]["init_args"]
        m["estimator"] = m["per_sample_mask"] = None
        m["model"]["init_args"]["beam_search"] = m["model"]["init_args"]["tokenizer"] = None
        for c in cfg["trainer"]["callbacks"]:
            if c["class_path"].endswith("TemperatureAnnealing"):
                c["init_args"]["preset"] = None
    assert paper == official
