"""The embedded default model's files (package data): ``config.json``, ``model.safetensors``, ``tokenizer.json``,
``transcoders/`` (circuit-tracer ``config.yaml`` + ``layer_{i}.safetensors``) and ``training.json`` (how it was
made and its measured numbers). Re-create with ``jcircuits train-default jcircuits/default --seed 0``; load with
``jcircuits.demo.default_model`` / ``default_transcoders``."""
