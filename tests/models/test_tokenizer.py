"""``jcircuits.models.tokenizer``: the BOS rule in each branch, on small tokenizers built locally."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from jcircuits.models.tokenizer import Tokenizer as JTokenizer

WORDS = ["the", "cat", "sat", "on", "mat", "[UNK]"]


def _write(tmp_path, specials, *, extra: dict[str, dict] | None = None):
    """A WordLevel tokenizer.json with ``specials`` registered as special tokens (ids after the words)."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens([AddedToken(s, special=True) for s in specials])
    tk.save(str(tmp_path / "tokenizer.json"))
    for name, content in (extra or {}).items():
        (tmp_path / name).write_text(json.dumps(content))
    return JTokenizer.from_file(tmp_path)


def test_bos_from_tokenizer_config_is_prepended(tmp_path):
    tok = _write(tmp_path, ["<start>", "<pad>"], extra={"tokenizer_config.json": {"bos_token": "<start>"}})
    ids = tok.encode("the cat sat")
    assert ids.dtype == np.int32
    assert ids.tolist() == [tok.token_to_id("<start>"), 0, 1, 2]


def test_bos_from_special_tokens_map_dict_form(tmp_path):
    tok = _write(
        tmp_path, ["<x>", "<y>"], extra={"special_tokens_map.json": {"bos_token": {"content": "<y>"}}}
    )
    assert tok.encode("cat")[0] == tok.token_to_id("<y>")


def test_bos_from_model_config_bos_token_id(tmp_path):
    tok = _write(tmp_path, ["<a>", "<b>"], extra={"config.json": {"bos_token_id": 7}})
    assert tok.bos_id == 7 and tok.id_to_token(7) == "<b>"
    assert tok.encode("mat").tolist() == [7, 4]


def test_conventional_bos_name_among_added_special_tokens(tmp_path):
    tok = _write(tmp_path, ["<pad>", "<bos>"])
    assert tok.encode("on").tolist() == [tok.token_to_id("<bos>"), 3]


def test_pad_is_used_when_there_is_no_bos(tmp_path):
    tok = _write(tmp_path, ["<eos>", "<pad>"])
    assert tok.bos_id is None
    assert tok.encode("on")[0] == tok.token_to_id("<pad>")


def test_eos_is_used_when_there_is_no_bos_or_pad(tmp_path):
    tok = _write(tmp_path, ["<zzz>", "</s>"])
    assert tok.encode("on")[0] == tok.token_to_id("</s>")


def test_any_special_id_is_used_as_a_last_resort(tmp_path):
    tok = _write(tmp_path, ["<q>", "<r>"])
    assert (tok.bos_id, tok.pad_id, tok.eos_id) == (None, None, None)
    assert tok.encode("on")[0] == tok.token_to_id("<q>")


def test_prompt_starting_with_a_special_token_is_not_prefixed_again(tmp_path):
    tok = _write(tmp_path, ["<bos>"])
    ids = tok.encode("<bos> the cat")
    assert ids.tolist() == [tok.token_to_id("<bos>"), 0, 1]
    assert tok.is_special(ids[0]) and not tok.is_special(ids[1])


def test_empty_prompt_raises(tmp_path):
    tok = _write(tmp_path, ["<bos>"])
    with pytest.raises(ValueError, match="empty prompt"):
        tok.encode("")


def test_decode_and_vocabulary_lookups(tmp_path):
    tok = _write(tmp_path, ["<bos>"])
    ids = tok.encode("the mat")
    assert tok.decode(ids, skip_special_tokens=True) == "the mat"
    assert tok.id_to_token(int(ids[1])) == "the"
    with pytest.raises(KeyError, match="dog"):
        tok.token_to_id("dog")
    with pytest.raises(KeyError, match="999"):
        tok.id_to_token(999)


def test_bpe_tokenizer_without_special_flags_in_config(tmp_path):
    vocab = {"<s>": 0, "a": 1, "b": 2, "ab": 3}
    tk = Tokenizer(models.BPE(vocab, [("a", "b")]))
    tk.add_special_tokens([AddedToken("<s>", special=True)])
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = JTokenizer.from_file(tmp_path / "tokenizer.json")
    assert tok.encode("abab").tolist() == [0, 3, 3]


def test_the_default_tokenizer_handles_case_as_its_lowercase_corpus_does():
    from jcircuits.default import DEFAULT_DIR
    from jcircuits.models import Tokenizer

    tok = Tokenizer.from_file(DEFAULT_DIR)
    upper = tok.encode("The capital of the state containing Dallas is")
    lower = tok.encode("the capital of the state containing dallas is")
    np.testing.assert_array_equal(upper, lower)
    assert tok.unk_id is not None and tok.unk_id not in upper


def test_unknown_words_are_named_in_a_warning_and_do_not_replace_the_bos():
    from jcircuits.default import DEFAULT_DIR
    from jcircuits.models import Tokenizer

    tok = Tokenizer.from_file(DEFAULT_DIR)
    with pytest.warns(UserWarning, match=r"not in the vocabulary.*\['Zorblax', 'Quuxville'\]"):
        ids = tok.encode("Zorblax is in Quuxville")
    assert ids[0] == tok.bos_id and ids[1] == tok.unk_id  # an unknown first word is not the start token
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.encode("dallas is in texas")  # known words: no warning
