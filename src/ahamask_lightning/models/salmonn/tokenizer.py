"""Vicuna's tokenizer as the official SALMONN code runs it: transformers 4.28's slow ``LlamaTokenizer``.

The official code loads ``LlamaTokenizer.from_pretrained(llama_path, use_fast=False)`` (transformers 4.28,
sentencepiece underneath) and adds ``[PAD]``. In transformers 5 ``LlamaTokenizer`` (and ``AutoTokenizer``)
is the tokenizers-backed Llama tokenizer. On the same ``tokenizer.model`` it differs from the slow one:

* text with leading spaces gets one ``▁`` fewer (its Metaspace prepends ``▁`` only where none is already
  there, while sentencepiece's dummy prefix always adds one: ``" hi"`` -> ``▁ ▁hi`` in 4.28);
* text that follows ``<s>`` / ``</s>`` inside a string gets no ``▁`` (4.28 encodes every piece between
  special tokens on its own, each with sentencepiece's dummy prefix);
* decoding a byte-fallback run that is not valid UTF-8 as a whole (say a cut multi-byte character) gives one
  U+FFFD per byte of the whole run, valid neighbouring bytes included, while sentencepiece keeps the valid
  characters and replaces only the bad bytes. Vicuna's Chinese output (S2TT) is mostly byte-fallback pieces.

:class:`SalmonnLlamaTokenizer` is transformers 5's own sentencepiece-backed base class,
``SentencePieceBackend`` (so it has the whole ``PreTrainedTokenizer`` API: ``__call__``, padding,
``batch_decode``, ``add_special_tokens``, ``save_pretrained``...), with the methods where that base
and 4.28's ``LlamaTokenizer`` part ways following 4.28's rules instead:

* ``tokenize``: split on special and added tokens, each piece between them ``sp_model.encode``d with
  sentencepiece's dummy prefix kept (the base drops it unless ``legacy``); around ``<unk>``/``<s>``/``</s>`` nothing is stripped
  (4.28's ``LlamaTokenizer`` makes them ``AddedToken(lstrip=False, rstrip=False)``), around any other one
  (SALMONN's ``[PAD]``, added as a plain string) the neighbouring whitespace is stripped on both sides,
  as 4.28 did for tokens given as plain strings (the base strips nothing);
* ``convert_tokens_to_string``: ``sp_model.decode`` on each run of ordinary pieces, special tokens
  written as they are, and one space before a run that a special token ends unless the run follows
  another special token or starts the text (``male </s>`` ids decode to ``" male</s>"``); the base
  joins the pieces and replaces ``▁``, which leaves byte-fallback pieces as ``<0xE4>``;
* ``decode`` (and so ``batch_decode``): added tokens decoded apart from the pieces and joined with
  spaces (``spaces_between_special_tokens=True``);
* ``build_inputs_with_special_tokens``: ``<s>`` before each sequence, no ``</s>``.

The tokenizers-backed class cannot be set to match: its byte-fallback decoder works on whole runs.
Only public methods of the base are overridden, and only its public attributes are read
(``added_tokens_encoder`` / ``added_tokens_decoder``, ``tokens_trie``, ``sp_model``).
"""
from __future__ import annotations

from typing import Any, ClassVar

from transformers.tokenization_utils_base import AddedToken
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
from transformers.utils import to_py_obj

PAD_TOKEN = "[PAD]"  # SALMONN: tokenizer.add_special_tokens({"pad_token": "[PAD]"}) -> id 32000 for Vicuna


class SalmonnLlamaTokenizer(SentencePieceBackend):
    """transformers 4.28's slow ``LlamaTokenizer`` on transformers 5 (see the module docstring).

    ``SalmonnLlamaTokenizer.from_pretrained(vicuna_dir)`` reads ``tokenizer.model`` (and
    ``tokenizer_config.json`` where present); ``SalmonnLlamaTokenizer(vocab_file=path)`` builds it from
    the sentencepiece model alone. :func:`load_salmonn_tokenizer` adds ``[PAD]`` as SALMONN does.
    """

    vocab_files_names: ClassVar[dict[str, str]] = {"vocab_file": "tokenizer.model"}
    model_input_names: ClassVar[list[str]] = ["input_ids", "attention_mask"]
    padding_side = "right"

    def __init__(self, vocab_file: str | None = None, unk_token: str = "<unk>", bos_token: str = "<s>",
                 eos_token: str = "</s>", pad_token: str | None = None, add_bos_token: bool = True,
                 add_eos_token: bool = False, clean_up_tokenization_spaces: bool = False, **kwargs: Any) -> None:
        kwargs.pop("legacy", None)  # 4.28 had no such switch: always the dummy prefix
        kwargs.pop("add_prefix_space", None)
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        super().__init__(vocab_file=vocab_file, unk_token=unk_token, bos_token=bos_token, eos_token=eos_token,
                         pad_token=pad_token, add_bos_token=add_bos_token, add_eos_token=add_eos_token,
                         clean_up_tokenization_spaces=clean_up_tokenization_spaces, legacy=True, **kwargs)

    # --- encoding --------------------------------------------------------------------------
    def sentencepiece_pieces(self, text: str) -> list[str]:
        """``sp_model.encode`` of one piece of text, sentencepiece's dummy prefix kept."""
        return self.sp_model.encode(text, out_type=str)

    def _never_stripped(self) -> set[str]:
        return {str(t) for t in (self.unk_token, self.bos_token, self.eos_token) if t is not None}

    def tokenize(self, text: str, **kwargs: Any) -> list[str]:
        """4.28's ``PreTrainedTokenizer.tokenize`` for ``LlamaTokenizer`` (see the module docstring)."""
        kwargs.pop("split_special_tokens", None)
        kwargs.pop("add_special_tokens", None)
        text, _ = self.prepare_for_tokenization(text, **kwargs)
        added_ids, added_tokens = self.added_tokens_encoder, self.added_tokens_decoder
        no_split = set(added_ids) | set(self.all_special_tokens)
        keep = self._never_stripped()
        pieces = self.tokens_trie.split(text)
        for i, piece in enumerate(pieces):
            if piece not in no_split or piece in keep:
                continue
            token = added_tokens.get(added_ids.get(piece, -1))
            flagged = isinstance(token, AddedToken) and (token.lstrip or token.rstrip)
            strip_right = token.rstrip if flagged else True
            strip_left = token.lstrip if flagged else True
            if strip_right and i + 1 < len(pieces) and pieces[i + 1]:
                pieces[i + 1] = pieces[i + 1].lstrip()
            if strip_left and i > 0 and pieces[i - 1]:
                pieces[i - 1] = pieces[i - 1].rstrip()
        out: list[str] = []
        for piece in pieces:
            if not piece:
                continue
            out.extend([piece] if piece in no_split else self.sentencepiece_pieces(piece))
        return out

    def build_inputs_with_special_tokens(self, token_ids_0: list[int],
                                         token_ids_1: list[int] | None = None) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        out = bos + token_ids_0 + eos
        return out if token_ids_1 is None else out + bos + token_ids_1 + eos

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        bos, eos = [1] if self.add_bos_token else [], [1] if self.add_eos_token else []
        out = bos + [0] * len(token_ids_0) + eos
        return out if token_ids_1 is None else out + bos + [0] * len(token_ids_1) + eos

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int],
                                             token_ids_1: list[int] | None = None) -> list[int]:
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return len(self.build_inputs_with_special_tokens([], [] if pair else None))

    # --- decoding --------------------------------------------------------------------------
    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        specials = set(self.all_special_tokens)
        run: list[str] = []
        out = ""
        prev_is_special = False
        for i, token in enumerate(tokens):
            if token in specials:
                if not prev_is_special and i != 0:
                    out += " "
                out += self.sp_model.decode(run) + token
                prev_is_special = True
                run = []
            else:
                run.append(token)
                prev_is_special = False
        return out + self.sp_model.decode(run)

    def decode(self, token_ids: Any, skip_special_tokens: bool = False, **kwargs: Any) -> str | list[str]:
        """One sequence of ids, or a batch of them (a list of lists), decoded as 4.28 did."""
        token_ids = to_py_obj(token_ids)
        if isinstance(token_ids, (list, tuple)) and token_ids and isinstance(token_ids[0], (list, tuple)):
            return [self._decode_sequence(seq, skip_special_tokens, **kwargs) for seq in token_ids]
        return self._decode_sequence(token_ids, skip_special_tokens, **kwargs)

    def _decode_sequence(self, token_ids: int | list[int], skip_special_tokens: bool = False,
                         clean_up_tokenization_spaces: bool | None = None, spaces_between_special_tokens: bool = True,
                         **kwargs) -> str:
        tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens)
        tokens = [tokens] if isinstance(tokens, str) else tokens
        added_ids, vocab = self.added_tokens_encoder, self.sp_model.get_piece_size()
        sub_texts: list[str] = []
        run: list[str] = []
        for token in tokens:
            if added_ids.get(token, -1) >= vocab:
                # a token added beyond the sentencepiece vocabulary ("[PAD]"): 4.28's added_tokens_encoder
                if run:
                    sub_texts.append(self.convert_tokens_to_string(run))
                    run = []
                sub_texts.append(token)
            else:
                run.append(token)
        if run:
            sub_texts.append(self.convert_tokens_to_string(run))
        text = (" " if spaces_between_special_tokens else "").join(sub_texts)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean else text


def load_salmonn_tokenizer(path: str) -> SalmonnLlamaTokenizer:
    """Vicuna's tokenizer from an HF directory (its ``tokenizer.model``) or a ``.model`` file, with
    ``[PAD]`` added and right padding, as ``SALMONN.__init__`` sets it up."""
    from pathlib import Path

    p = Path(path)
    tok = (SalmonnLlamaTokenizer(vocab_file=str(p)) if p.is_file()
           else SalmonnLlamaTokenizer.from_pretrained(str(p)))
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.padding_side = "right"
    return tok
