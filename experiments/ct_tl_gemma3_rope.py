"""Why circuit-tracer 0.5.0's TransformerLens backend cannot serve as the Gemma-3 reference.

Run in the reference env (tests/reference/setup_ref_env.sh):

    .venv-ref/bin/python experiments/ct_tl_gemma3_rope.py

Builds the seeded tiny Gemma-3 of tests/reference/make_cases.py (local layers RoPE base 1e3, global layers 1e5
linearly scaled by 4), describes it to TransformerLens 3.2.1 with the Gemma-3 options TL has (use_qk_norm,
rotary_base_local, rotary_scaling_factor, attn_scale = sqrt(query_pre_attn_scalar), local attention), and
compares logits with transformers: for the plain HookedTransformer, and after circuit-tracer's
``TransformerLensReplacementModel._deduplicate_attention_buffers`` (run by ``_configure_replacement_model``),
which keeps one ``rotary_sin`` / ``rotary_cos`` (the last block's) for every block. Prints both differences.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reference"))

import make_cases as mc  # noqa: E402


def main() -> int:
    from circuit_tracer.replacement_model.common import ensure_tokenized
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        vocab = mc.build_tokenizer(model_dir)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        hf = mc.build_hf_model("gemma3", vocab, model_dir, 1005)  # the base model of the gemma3_* cases
        c = hf.config
        rs = c.rope_scaling
        assert rs["rope_type"] == "linear"
        cfg = HookedTransformerConfig(
            d_model=c.hidden_size,
            d_head=c.head_dim,
            n_heads=c.num_attention_heads,
            d_mlp=c.intermediate_size,
            n_layers=c.num_hidden_layers,
            n_ctx=c.max_position_embeddings,
            eps=c.rms_norm_eps,
            d_vocab=c.vocab_size,
            n_key_value_heads=c.num_key_value_heads,
            act_fn=c.hidden_activation,
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=c.head_dim,
            rotary_base=c.rope_theta,
            rotary_base_local=c.rope_local_base_freq,
            rotary_scaling_factor=rs["factor"],
            rotary_adjacent_pairs=False,
            gated_mlp=True,
            final_rms=True,
            use_attn_scale=True,
            attn_scale=math.sqrt(c.query_pre_attn_scalar),
            use_qk_norm=True,
            use_normalization_before_and_after=True,
            use_local_attn=True,
            window_size=c.sliding_window,
            attn_types=["local" if t == "sliding_attention" else "global" for t in c.layer_types],
            original_architecture="Gemma3ForCausalLM",
            model_name="jcircuits-tiny-gemma3",
            dtype=torch.float32,
            device="cpu",
        )
        tl = TransformerLensReplacementModel(cfg, tokenizer=tok)
        tl.load_and_process_state_dict(
            convert_gemma_weights(hf, cfg),
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
            refactor_factored_attn_matrices=False,
        )
        tl.eval()
        tokens = ensure_tokenized(mc.PROMPT, tok, "cpu", cfg.model_name)
        with torch.no_grad():
            want = hf(tokens[None]).logits[0]
            plain = tl(tokens[None])[0]
            tl._deduplicate_attention_buffers()
            dedup = tl(tokens[None])[0]
        print(f"layer types: {cfg.attn_types}; T = {tokens.shape[0]}")
        print(f"max |HF - TL| plain HookedTransformer:                 {float((want - plain).abs().max()):.3g}")
        print(f"max |HF - TL| after _deduplicate_attention_buffers():   {float((want - dedup).abs().max()):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
