"""No silent NaN: a model whose weights go non-finite is refused before attribution (naming the layer), and an
edit whose value or effect overflows float32 is refused instead of printing NaN probabilities."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from jcircuits.attribution import attribute
from jcircuits.cli import main
from jcircuits.default import default_model, default_transcoders
from jcircuits.intervention import feature_intervention

PROMPT = "the capital of texas is"


@pytest.fixture(scope="module")
def default():
    m = default_model()
    return m, default_transcoders(m)


def test_non_finite_weights_are_refused_before_attribution_naming_the_layer(default):
    model, ts = default
    lay = model.params.layers
    w_down = jnp.asarray(lay.w_down).at[2, 0, :].set(jnp.nan)
    bad = dataclasses.replace(
        model, params=dataclasses.replace(model.params, layers=dataclasses.replace(lay, w_down=w_down))
    )
    with pytest.raises(ValueError, match="non-finite logits at position .*output of layer 2"):
        attribute(bad, ts, PROMPT, verbose=False)


def test_edit_values_beyond_float32_are_refused(default, capsys):
    model, ts = default
    with pytest.raises(ValueError, match="overflows float32"):
        feature_intervention(model, ts, PROMPT, [(2, 4, 89, 1e39)])
    code = main(["intervene", "--prompt", PROMPT, "--set", "2:4:89=1e39"])
    err = capsys.readouterr().err
    assert code == 2 and "overflows float32" in err and "Traceback" not in err


def test_an_edit_whose_effect_overflows_is_refused_not_printed_as_nan(default, capsys):
    model, ts = default
    iv = [(1, p, f, 3e38) for p in range(1, 6) for f in range(4)]
    with pytest.raises(ValueError, match="non-finite logits"):
        feature_intervention(model, ts, PROMPT, iv, constrained_layers=range(model.cfg.n_layers))
    code = main(
        ["intervene", "--prompt", PROMPT, "--set", "1:1..6:0=3e38", "--set", "1:1..6:1=3e38", "--constrained"]
    )
    err = capsys.readouterr().err
    out = capsys.readouterr().out
    assert code == 2 and "non-finite logits" in err and "nan" not in out.lower()
    # an ordinary edit still works
    logits, _ = feature_intervention(model, ts, PROMPT, [(2, 4, 89, 5.0)])
    assert np.isfinite(np.asarray(logits)).all()
