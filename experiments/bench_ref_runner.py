"""circuit-tracer side of ``bench_attribution.py``: run inside the reference virtualenv.

    /work/venv-ref-probe/bin/python experiments/bench_ref_runner.py CASE_DIR OUT.npz

CASE_DIR holds ``model/`` (HF Llama checkpoint + tokenizer.json), ``transcoders/`` (circuit-tracer per-layer
``layer_i.safetensors`` + ``config.yaml``) and ``case.json`` (tokens, settings). Builds the TransformerLens
replacement model offline (config by hand, weights converted, loaded *before* the transcoders are attached),
checks HF logits == TL logits, then times ``circuit_tracer.attribute`` twice (cold, warm) and writes the warm
graph plus timings to OUT.npz. circuit-tracer is only called, never copied.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402


def tl_config(hf, model_name: str):
    from transformer_lens import HookedTransformerConfig

    rs = hf["rope_scaling"]
    return HookedTransformerConfig(
        d_model=hf["hidden_size"],
        d_head=hf["head_dim"],
        n_heads=hf["num_attention_heads"],
        d_mlp=hf["intermediate_size"],
        n_layers=hf["num_hidden_layers"],
        n_ctx=hf["max_position_embeddings"],
        eps=hf["rms_norm_eps"],
        d_vocab=hf["vocab_size"],
        n_key_value_heads=hf["num_key_value_heads"],
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=hf["head_dim"],
        rotary_base=hf["rope_theta"],
        rotary_adjacent_pairs=False,
        gated_mlp=True,
        final_rms=True,
        act_fn=hf["hidden_act"],
        original_architecture="LlamaForCausalLM",
        use_NTK_by_parts_rope=True,
        NTK_by_parts_factor=rs["factor"],
        NTK_by_parts_low_freq_factor=rs["low_freq_factor"],
        NTK_by_parts_high_freq_factor=rs["high_freq_factor"],
        NTK_original_ctx_len=rs["original_max_position_embeddings"],
        model_name=model_name,
        dtype=torch.float32,
        device="cpu",
        default_prepend_bos=True,
    )


def main() -> int:
    case_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    threads = int(os.environ.get("BENCH_TORCH_THREADS", "2"))
    torch.set_num_threads(threads)
    case = json.loads((case_dir / "case.json").read_text())
    from circuit_tracer import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    t0 = time.perf_counter()
    mdir = case_dir / "model"
    hf_cfg = json.loads((mdir / "config.json").read_text())
    tok = PreTrainedTokenizerFast.from_pretrained(str(mdir))  # tokenizer.json + tokenizer_config.json
    hf_model = AutoModelForCausalLM.from_pretrained(str(mdir), attn_implementation="eager", dtype=torch.float32)
    hf_model.eval()
    cfg = tl_config(hf_cfg, "jcircuits-bench-llama")
    tl = TransformerLensReplacementModel(cfg, tokenizer=tok)
    sd = convert_llama_weights(hf_model, cfg)
    tl.load_and_process_state_dict(
        sd, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    have = tl.state_dict()
    for k, v in sd.items():  # TL loads with strict=False: check every tensor arrived
        if k not in have or not torch.equal(have[k].float(), v.float()):
            raise RuntimeError(f"TL weight {k} missing or different after loading")
    tl.eval()

    tdir = case_dir / "transcoders"
    tcfg = yaml.safe_load((tdir / "config.yaml").read_text())
    paths = {l: str(tdir / n) for l, n in enumerate(tcfg["transcoders"])}
    tc = load_transcoder_set(
        paths, scan=tcfg["scan"], feature_input_hook=tcfg["feature_input_hook"],
        feature_output_hook=tcfg["feature_output_hook"], device=torch.device("cpu"), dtype=torch.float32,
        lazy_encoder=False, lazy_decoder=False,
    )
    tl._configure_replacement_model(tc)
    tokens = torch.tensor(case["tokens"], dtype=torch.long)
    with torch.no_grad():
        hf_logits = hf_model(tokens[None]).logits[0].float().numpy()
        tl_logits = tl(tokens[None])[0].float().numpy()
    hf_tl = float(np.max(np.abs(hf_logits - tl_logits)))
    if hf_tl > 1e-3:
        raise RuntimeError(f"HF vs TL logits differ by {hf_tl:.3g}")
    setup_s = time.perf_counter() - t0

    kw = dict(max_feature_nodes=case["max_feature_nodes"], batch_size=case["batch_size"],
              update_interval=case["update_interval"])
    times, graphs = [], []
    for rep in range(case.get("ref_reps", 2)):
        torch.manual_seed(0)
        t = time.perf_counter()
        g = attribute(tokens, tl, **kw)
        times.append(time.perf_counter() - t)
        graphs.append(g)
        print(f"circuit-tracer attribute #{rep}: {times[-1]:.2f}s", flush=True)
    g = graphs[-1]
    same = bool(torch.equal(graphs[0].adjacency_matrix, g.adjacency_matrix)) if len(graphs) > 1 else True
    np.savez(
        out,
        adjacency_matrix=g.adjacency_matrix.numpy(),
        selected_features=g.selected_features.numpy().astype(np.int64),
        active_features=g.active_features.numpy().astype(np.int64),
        activation_values=g.activation_values.numpy(),
        logit_token_ids=g.logit_token_ids.numpy().astype(np.int64),
        logit_probabilities=g.logit_probabilities.numpy(),
        tl_logits=tl_logits,
        meta=np.array(json.dumps(dict(
            times=times, setup_s=setup_s, hf_tl_max_abs=hf_tl, cold_warm_identical=same, threads=threads,
            torch=torch.__version__,
        ))),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
