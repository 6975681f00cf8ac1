"""Prompt tokenization with a fixed, documented BOS rule.

``Tokenizer.encode(prompt)`` tokenizes *without* the tokenizer's own special-token template, then makes sure
the sequence starts with a special token: if the first token is not special, one is prepended — the BOS token
if the model defines one, else the pad token, else EOS, else the lowest special id. (This is circuit-tracer's
rule, and it gives attribution a stable first position that absorbs attention.) A prompt that already starts
with a special token (e.g. ``"<bos>The"``) is left as is. The unknown-word token does not count as a start: a
prompt whose first word is unknown still gets its BOS (circuit-tracer, which counts every special id, would use
the ``<unk>`` as position 0).

Words the vocabulary lacks are never silent: ``encode`` warns, naming them, when it produces the unknown token.

Chat (instruction-tuned) models: ``encode_chat(text)`` renders ``text`` as one user turn through the tokenizer's own
chat template (``chat_template`` in ``tokenizer_config.json``, or ``chat_template.jinja`` beside it), with the
generation prompt, and tokenizes the result as ``encode`` does. Templates that write the BOS (Gemma's
``{{ bos_token }}``) thus start with it once; those that do not (Qwen3's ``<|im_start|>``) start with a special
token already, so nothing is prepended. The template runs in jinja2's sandbox with the globals and filters
``transformers`` gives it (``raise_exception``, ``strftime_now``, a non-escaping ``tojson``, trim/lstrip blocks,
loop controls), so the ids equal ``transformers``' ``apply_chat_template(..., tokenize=True)``.

The BOS/pad/EOS tokens are read, in order of precedence, from ``tokenizer_config.json``,
``special_tokens_map.json`` and ``config.json`` beside ``tokenizer.json``, then from conventional names among
the tokenizer's added special tokens (``<bos>``, ``<s>``, ``<|begin_of_text|>``, …).
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Tokenizer"]

_CONVENTIONAL = {
    "bos": ("<bos>", "<s>", "<|begin_of_text|>", "<|startoftext|>", "[BOS]", "[CLS]"),
    "pad": ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>"),
    "eos": ("<eos>", "</s>", "<|end_of_text|>", "<|endoftext|>", "<|eot_id|>", "[EOS]", "[SEP]"),
}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path) as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def _token_content(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        return v.get("content")
    return None


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the model's BOS/pad/EOS ids and our BOS rule."""

    def __init__(
        self,
        tokenizer,
        *,
        bos_id: int | None = None,
        pad_id: int | None = None,
        eos_id: int | None = None,
        chat_template: str | None = None,
    ):
        self._tk = tokenizer
        self.chat_template = chat_template
        decoder = tokenizer.get_added_tokens_decoder()
        self.special_ids: frozenset[int] = frozenset(i for i, t in decoder.items() if t.special)
        found = {"bos": bos_id, "pad": pad_id, "eos": eos_id}
        for role, names in _CONVENTIONAL.items():
            if found[role] is None:
                for name in names:
                    i = tokenizer.token_to_id(name)
                    if i is not None and i in self.special_ids:
                        found[role] = i
                        break
        self.bos_id, self.pad_id, self.eos_id = found["bos"], found["pad"], found["eos"]
        unk = json.loads(tokenizer.to_str()).get("model", {}).get("unk_token")
        self.unk_id: int | None = tokenizer.token_to_id(unk) if isinstance(unk, str) else None
        # The ids we may prepend count as special even if tokenizer.json does not flag them.
        self.special_ids |= frozenset(i for i in found.values() if i is not None)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` (a file, or a model directory containing it and optionally
        ``tokenizer_config.json``, ``special_tokens_map.json``, ``config.json``)."""
        import tokenizers

        path = Path(path)
        directory, file = (path, path / "tokenizer.json") if path.is_dir() else (path.parent, path)
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {file}")
        tk = tokenizers.Tokenizer.from_file(str(file))
        ids: dict[str, int | None] = {"bos": None, "pad": None, "eos": None}
        sources = [
            _read_json(directory / "tokenizer_config.json"),
            _read_json(directory / "special_tokens_map.json"),
        ]
        model_cfg = _read_json(directory / "config.json")
        for role in ids:
            for src in sources:
                content = _token_content(src.get(f"{role}_token"))
                if content is not None and tk.token_to_id(content) is not None:
                    ids[role] = tk.token_to_id(content)
                    break
            if ids[role] is None:
                v = model_cfg.get(f"{role}_token_id")
                v = v[0] if isinstance(v, list) and v else v
                if isinstance(v, int) and 0 <= v < tk.get_vocab_size(with_added_tokens=True):
                    ids[role] = v
        template = _chat_template(directory, sources[0])
        return cls(tk, bos_id=ids["bos"], pad_id=ids["pad"], eos_id=ids["eos"], chat_template=template)

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def prefix_id(self) -> int:
        """The id ``encode`` prepends: BOS, else pad, else EOS, else the lowest special id."""
        for i in (self.bos_id, self.pad_id, self.eos_id):
            if i is not None:
                return i
        if self.special_ids:
            return min(self.special_ids)
        raise ValueError("the tokenizer defines no special token to start a prompt with")

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self.special_ids

    def encode(self, prompt: str) -> np.ndarray:
        """Token ids ``[T]`` (int32) for ``prompt``, starting with a special token (see the module docstring).
        Raises ``ValueError`` for an empty prompt."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        if not prompt:
            raise ValueError("empty prompt: nothing to tokenize")
        enc = self._tk.encode(prompt, add_special_tokens=False)
        ids = enc.ids
        if not ids:
            raise ValueError(f"prompt {prompt!r} produced no tokens")
        if self.unk_id is not None and self.unk_id in ids:
            unknown = [prompt[a:b] for i, (a, b) in zip(ids, enc.offsets, strict=True) if i == self.unk_id]
            warnings.warn(
                f"{len(unknown)} word(s) of the prompt are not in the vocabulary and became "
                f"{self.id_to_token(self.unk_id)!r}: {unknown}",
                UserWarning,
                stacklevel=2,
            )
        if not self.is_special(ids[0]) or ids[0] == self.unk_id:
            ids = [self.prefix_id(), *ids]
        return np.asarray(ids, dtype=np.int32)

    def apply_chat_template(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The text of ``messages`` (``[{"role": "user", "content": …}, …]``) rendered by the tokenizer's chat
        template (see the module docstring). ``ValueError`` when the tokenizer has none."""
        if self.chat_template is None:
            raise ValueError(
                "this tokenizer has no chat template (no chat_template in tokenizer_config.json, no "
                "chat_template.jinja): it is not a chat model's; give the prompt as plain text"
            )
        special = {
            f"{role}_token": None if i is None else self._tk.id_to_token(i)
            for role, i in (("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id), ("unk", self.unk_id))
        }
        return _compile(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special
        )

    def encode_chat(self, text: str) -> np.ndarray:
        """Token ids ``[T]`` of ``text`` as one user turn of a chat, followed by the generation prompt (the
        model's turn begins), tokenized with ``encode``'s rule."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty prompt: nothing to put in a chat turn")
        return self.encode(self.apply_chat_template([{"role": "user", "content": text}]))

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        return self._tk.decode(
            [int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=skip_special_tokens
        )

    def id_to_token(self, token_id: int) -> str:
        tok = self._tk.id_to_token(int(token_id))
        if tok is None:
            raise KeyError(f"token id {token_id} is not in the vocabulary (size {self.vocab_size})")
        return tok

    def token_to_id(self, token: str) -> int:
        i = self._tk.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i


def _chat_template(directory: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The default chat template beside a tokenizer: ``chat_template.jinja`` (newer hub layout), else
    ``tokenizer_config.json``'s ``chat_template`` (a string, or a list of named templates: ``default``)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    t = tokenizer_config.get("chat_template")
    if isinstance(t, list):
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        t = named.get("default")
    return t if isinstance(t, str) else None


def _compile(template: str):
    """A chat template compiled in jinja2's immutable sandbox (hub templates are untrusted), with the
    environment ``transformers`` renders them in."""
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # a dependency of jcircuits; only a broken install lacks it
        raise ImportError("chat templates need jinja2 (pip install 'jinja2>=3.1.6')") from e

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
