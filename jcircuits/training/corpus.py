"""The synthetic corpus the default model learns: two-hop geography facts and small-number addition.

A world of ``STATES``: each has a capital and five cities. The corpus mixes these sentence kinds, lowercase and
space-separated (one word = one token)::

    dallas is in texas .                                   (city -> state, single hop)
    the capital of texas is austin .                       (state -> capital, single hop)
    the state containing dallas is texas .                 (city -> state, question form)
    the capital of the state containing dallas is austin . (two hops: city -> state -> capital)
    3 plus 4 is 7 .                                        (addition, operands 0..9)

Held out from training (by construction, from the seed): the two-hop sentence of one city per state (its
single-hop facts are still trained, so answering it needs composition), and a set of addition pairs. These are
the evaluation prompts. Everything is a pure function of the seed, so the corpus, and hence the model trained
on it, is reproducible.

The tokenizer is a Hugging Face ``WordLevel`` ``tokenizer.json`` over the corpus vocabulary with ``<pad> <bos>
<eos> <unk>`` at ids 0-3, built with the ``tokenizers`` library and read back by ``jcircuits.models.tokenizer``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

__all__ = [
    "STATES",
    "World",
    "make_world",
    "sentences",
    "sample_documents",
    "build_tokenizer",
    "encode_documents",
    "eval_prompts",
    "vocabulary",
    "SPECIALS",
]

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS = 0, 1, 2

# state: (capital, cities). Single words only: the tokenizer is word-level.
STATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "texas": ("austin", ("dallas", "houston", "lubbock", "waco", "plano")),
    "california": ("sacramento", ("oakland", "fresno", "berkeley", "pasadena", "irvine")),
    "ohio": ("columbus", ("cleveland", "cincinnati", "dayton", "akron", "toledo")),
    "illinois": ("springfield", ("chicago", "peoria", "naperville", "joliet", "evanston")),
    "florida": ("tallahassee", ("miami", "orlando", "tampa", "jacksonville", "gainesville")),
    "georgia": ("atlanta", ("savannah", "macon", "augusta", "athens", "valdosta")),
    "washington": ("olympia", ("seattle", "spokane", "tacoma", "yakima", "everett")),
    "oregon": ("salem", ("portland", "eugene", "bend", "medford", "corvallis")),
    "colorado": ("denver", ("boulder", "aspen", "pueblo", "durango", "greeley")),
    "arizona": ("phoenix", ("tucson", "mesa", "tempe", "flagstaff", "yuma")),
    "michigan": ("lansing", ("detroit", "flint", "kalamazoo", "saginaw", "muskegon")),
    "tennessee": ("nashville", ("memphis", "knoxville", "chattanooga", "jackson", "franklin")),
}
# The README's headline prompt must be answered from training, so dallas is never held out.
_NEVER_HELD_OUT = frozenset({"dallas", "oakland"})
N_OPERAND = 10  # addition operands 0..9, sums 0..18


@dataclasses.dataclass(frozen=True)
class World:
    """The facts and the train/held-out split, fixed by ``seed``."""

    state_of: dict[str, str]  # city -> state
    capital_of: dict[str, str]  # state -> capital
    held_out_cities: tuple[str, ...]  # two-hop sentence never trained
    held_out_sums: tuple[tuple[int, int], ...]  # addition pairs never trained
    seed: int

    @property
    def train_cities(self) -> tuple[str, ...]:
        return tuple(c for c in self.state_of if c not in self.held_out_cities)

    @property
    def train_sums(self) -> tuple[tuple[int, int], ...]:
        held = set(self.held_out_sums)
        return tuple((a, b) for a in range(N_OPERAND) for b in range(N_OPERAND) if (a, b) not in held)


def make_world(seed: int = 0, n_held_out_sums: int = 15) -> World:
    """The world and its split: one held-out city per state (two-hop only) and ``n_held_out_sums`` pairs."""
    rng = np.random.default_rng(seed)
    state_of = {c: s for s, (_, cities) in STATES.items() for c in cities}
    capital_of = {s: cap for s, (cap, _) in STATES.items()}
    held = []
    for _, (_, cities) in STATES.items():
        choices = [c for c in cities if c not in _NEVER_HELD_OUT]
        held.append(choices[int(rng.integers(len(choices)))])
    pairs = [(a, b) for a in range(N_OPERAND) for b in range(N_OPERAND)]
    idx = rng.choice(len(pairs), n_held_out_sums, replace=False)
    return World(state_of, capital_of, tuple(held), tuple(sorted(pairs[i] for i in idx)), seed)


def sentences(world: World) -> dict[str, list[str]]:
    """Every training sentence, by kind (each ends with ``" ."``)."""
    out: dict[str, list[str]] = {
        "city_state": [f"{c} is in {s} ." for c, s in world.state_of.items()],
        "capital": [f"the capital of {s} is {cap} ." for s, cap in world.capital_of.items()],
        "state_q": [f"the state containing {c} is {s} ." for c, s in world.state_of.items()],
        "two_hop": [
            f"the capital of the state containing {c} is {world.capital_of[world.state_of[c]]} ."
            for c in world.train_cities
        ],
        "addition": [f"{a} plus {b} is {a + b} ." for a, b in world.train_sums],
    }
    return out


# How often each kind is drawn; two-hop and addition need the most practice.
_KIND_WEIGHTS = {"city_state": 1.0, "capital": 0.6, "state_q": 1.0, "two_hop": 2.0, "addition": 2.0}


def sample_documents(world: World, n_docs: int, seq_len: int, seed: int) -> list[list[str]]:
    """``n_docs`` documents, each ``<bos>`` then whole random sentences filling at most ``seq_len`` tokens."""
    rng = np.random.default_rng(seed)
    by_kind = sentences(world)
    kinds = list(_KIND_WEIGHTS)
    p = np.array([_KIND_WEIGHTS[k] for k in kinds])
    p = p / p.sum()
    docs = []
    for _ in range(n_docs):
        words = ["<bos>"]
        while True:
            pool = by_kind[kinds[int(rng.choice(len(kinds), p=p))]]
            s = pool[int(rng.integers(len(pool)))].split()
            if len(words) + len(s) > seq_len:
                break
            words += s
        docs.append(words)
    return docs


def vocabulary(world: World) -> list[str]:
    """Specials, then every corpus word (sorted). Every sum 0..18 is included even if only a held-out pair
    produces it, so held-out answers are always in the vocabulary."""
    words: set[str] = set()
    for pool in sentences(world).values():
        for s in pool:
            words.update(s.split())
    words.update(str(i) for i in range(2 * N_OPERAND - 1))
    return list(SPECIALS) + sorted(words)


def build_tokenizer(world: World, out_path: str | Path | None = None):
    """A word-level ``tokenizers.Tokenizer`` for the corpus (written to ``out_path`` when given)."""
    import tokenizers
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    vocab = {w: i for i, w in enumerate(vocabulary(world))}
    tk = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()  # the corpus is lowercase: "Dallas" is "dallas"
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.add_special_tokens(list(SPECIALS))
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    if out_path is not None:
        tk.save(str(out_path))
    return tk


def encode_documents(tk, docs: list[list[str]], seq_len: int) -> np.ndarray:
    """Token ids ``[N, seq_len]`` (int32), right-padded with ``<pad>``; unknown words are an error."""
    vocab = tk.get_vocab()
    out = np.full((len(docs), seq_len), PAD, np.int32)
    for i, words in enumerate(docs):
        try:
            out[i, : len(words)] = [vocab[w] for w in words]
        except KeyError as e:
            raise ValueError(f"word {e.args[0]!r} is not in the tokenizer's vocabulary") from None
    return out


def eval_prompts(world: World) -> dict[str, list[tuple[str, str]]]:
    """``(prompt, answer)`` pairs by split: two-hop held-out / trained, state lookup, addition held-out /
    trained. Prompts have no ``<bos>`` (the tokenizer prepends it) and end where the answer word is due."""
    two_hop = lambda c: f"the capital of the state containing {c} is"  # noqa: E731
    ans = lambda c: world.capital_of[world.state_of[c]]  # noqa: E731
    return {
        "two_hop_held_out": [(two_hop(c), ans(c)) for c in world.held_out_cities],
        "two_hop_train": [(two_hop(c), ans(c)) for c in world.train_cities],
        "state_of_held_out": [
            (f"the state containing {c} is", world.state_of[c]) for c in world.held_out_cities
        ],
        "addition_held_out": [(f"{a} plus {b} is", str(a + b)) for a, b in world.held_out_sums],
        "addition_train": [(f"{a} plus {b} is", str(a + b)) for a, b in world.train_sums],
    }
