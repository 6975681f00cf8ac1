"""``jcircuits features build``: the embedded default over its own corpus or given ids, text corpora, and one-line
errors with exit status 2 for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from jcircuits.cli import main
from jcircuits.commands.features import default_corpus_tokens, text_to_tokens
from jcircuits.default import default_model
from jcircuits.features import FeatureStore


def test_default_model_over_its_own_corpus_and_given_ids(tmp_path):
    assert main(["features", "build", "--n-docs", "8", "--context", "16", "-q", "-o", str(tmp_path / "a")]) == 0
    store = FeatureStore(tmp_path / "a")
    assert store.n_layers == 4 and store.n_features(0) == 512
    rec = store.feature(3, 0)
    assert all(len(e["tokens"]) <= 16 for q in rec["examples_quantiles"] for e in q["examples"])
    ids = default_corpus_tokens(8)
    assert ids.shape == (8, 48) and (ids[:, 0] == 1).all()
    np.save(tmp_path / "ids.npy", ids)
    args = ["features", "build", "--tokens-npy", str(tmp_path / "ids.npy"), "--max-tokens", "200", "-q"]
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    assert FeatureStore(tmp_path / "b").meta["n_sequences"] == 4  # 200 // 48


def test_text_rows_start_with_bos_and_pad_the_rest():
    model = default_model()
    rows = text_to_tokens(model, "dallas is in texas .\n\nthe capital of texas is austin .\n", 5)
    assert rows.shape[1] == 5 and (rows[:, 0] == model.cfg.bos_token_id).all()
    ids = lambda s: [int(i) for i in model.tokenizer.encode(s)[1:]]  # noqa: E731
    assert rows.tolist() == [
        [1, *ids("dallas is in texas")], [1, *ids("."), 0, 0, 0],
        [1, *ids("the capital of texas")], [1, *ids("is austin ."), 0],
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--text", "X", "--tokens-npy", "X"], "at most one of --text"),
        (["--text", "/no/such/file"], "--text /no/such/file: no such file"),
        (["--model", "m", "--transcoders", "t"], "--model needs a corpus"),
        (["--tokens-npy", "BAD1D"], "integers [n_sequences, seq_len]"),
        (["--tokens-npy", "NOBOS"], "not the BOS"),
        (["--transcoders", "t"], "--transcoders needs --model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    np.save(tmp_path / "bad1d.npy", np.arange(5))
    np.save(tmp_path / "nobos.npy", np.full((2, 4), 5, np.int32))
    extra = [
        {"BAD1D": str(tmp_path / "bad1d.npy"), "NOBOS": str(tmp_path / "nobos.npy"), "X": str(tmp_path / "bad1d.npy")}
        .get(x, x)
        for x in extra
    ]
    assert main(["features", "build", *extra, "-q", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("jcircuits features: error:") and message in err
