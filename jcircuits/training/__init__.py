"""Training in JAX: the synthetic corpus and tiny Llama LM of the embedded default model, activation harvesting,
and per-layer / cross-layer transcoder training with optax and orbax checkpoints."""
