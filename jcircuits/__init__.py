"""jcircuits: JAX-native circuit tracing (attribution graphs over transcoder replacement models)."""

__version__ = "0.1.0"
