"""Chat templates (``Tokenizer.encode_chat``, ``attribute/intervene --chat``): the ids equal what ``transformers``'
``apply_chat_template(..., tokenize=True)`` gives for the same tokenizer folder, for templates shaped like Gemma-3's
(writes the BOS, system turn folded into the first user turn, alternation enforced with ``raise_exception``) and
Qwen3's (no BOS, ``<|im_start|>`` turns, loop controls), read from ``tokenizer_config.json`` (string or named list)
or from ``chat_template.jinja``."""

from __future__ import annotations

import pytest
from hf_tiny import GEMMA_LIKE, QWEN_LIKE
from hf_tiny import chat_tokenizer_folder as _folder

from jcircuits.commands._common import UsageError, prompt_of
from jcircuits.models.model import Model
from jcircuits.models.tokenizer import Tokenizer as JTokenizer


def _hf_ids(folder, messages):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folder))
    out = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("template, starts_with", [(GEMMA_LIKE, "<bos>"), (QWEN_LIKE, "<|im_start|>")])
def test_encode_chat_equals_transformers_apply_chat_template(tmp_path, template, starts_with):
    folder = _folder(tmp_path, template=template, bos="<bos>" if starts_with == "<bos>" else None)
    tok = JTokenizer.from_file(folder)
    ids = tok.encode_chat("the capital of texas is")
    assert ids.tolist() == _hf_ids(folder, [{"role": "user", "content": "the capital of texas is"}])
    assert tok.id_to_token(int(ids[0])) == starts_with  # the template's own start, never a second BOS
    assert ids.tolist().count(tok.token_to_id("<bos>")) == (1 if starts_with == "<bos>" else 0)


def test_system_turn_and_multi_turn_render_as_transformers_does(tmp_path):
    folder = _folder(tmp_path, template=GEMMA_LIKE)
    tok = JTokenizer.from_file(folder)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the capital of texas"},
            {"role": "assistant", "content": "is"}, {"role": "user", "content": "the capital"}]
    assert tok.encode(tok.apply_chat_template(msgs)).tolist() == _hf_ids(folder, msgs)


def test_a_template_that_raises_gives_its_message(tmp_path):
    from jinja2 import TemplateError

    tok = JTokenizer.from_file(_folder(tmp_path, template=GEMMA_LIKE))
    with pytest.raises(TemplateError, match="alternate"):
        tok.apply_chat_template([{"role": "assistant", "content": "is"}])


def test_chat_template_jinja_file_wins_and_named_lists_give_the_default(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    tok = JTokenizer.from_file(_folder(a, template=GEMMA_LIKE, jinja=QWEN_LIKE))
    assert tok.chat_template == QWEN_LIKE
    named = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": QWEN_LIKE}]
    assert JTokenizer.from_file(_folder(b, template=named)).chat_template == QWEN_LIKE


def test_the_sandbox_refuses_reaching_python_internals(tmp_path):
    from jinja2.exceptions import SecurityError

    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    tok = JTokenizer.from_file(_folder(tmp_path, template=evil))
    with pytest.raises(SecurityError):
        tok.apply_chat_template([{"role": "user", "content": "the"}])


def test_prompt_of_formats_the_chat_and_refuses_models_without_a_template(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    chat = Model(params=None, cfg=None, tokenizer=JTokenizer.from_file(_folder(a, template=QWEN_LIKE)))
    base = Model(params=None, cfg=None, tokenizer=JTokenizer.from_file(_folder(b)))
    assert prompt_of(chat, "the capital", None, chat=True).tolist() == chat.tokenizer.encode_chat("the capital").tolist()
    assert prompt_of(base, "the capital", None) == "the capital"  # plain text: the engine applies the BOS rule
    with pytest.raises(UsageError, match="no chat template"):
        prompt_of(base, "the capital", None, chat=True)
    with pytest.raises(UsageError, match="does not apply to --tokens"):
        prompt_of(chat, None, "2,5", chat=True)
