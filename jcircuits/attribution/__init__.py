"""Attribution: the frozen linear replacement model, targets, and the vmapped-vjp engine."""

from jcircuits.attribution.engine import attribute, attribute_batch, build_context
from jcircuits.attribution.targets import CustomTarget, Targets, resolve_targets

__all__ = ["attribute", "attribute_batch", "build_context", "CustomTarget", "Targets", "resolve_targets"]
