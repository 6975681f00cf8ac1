"""What every layer may use: the one pytree convention (``pytree``), the one Hub resolver (``hub``), and the
shape-bucket policy that the engine compiles for and the memory estimator plans with (``buckets``)."""
