"""Feature dashboards: what each transcoder feature fires on and what it promotes, computed in JAX over a corpus
and written in circuit-tracer's feature layout (``format``), read back one feature at a time (``FeatureStore``).
"""

from jcircuits.features.build import DashboardSettings, build_dashboards, top_bottom_logits
from jcircuits.features.format import FeatureStore, cantor_pairing, cantor_unpair
from jcircuits.features.labels import auto_label

__all__ = [
    "DashboardSettings",
    "build_dashboards",
    "top_bottom_logits",
    "FeatureStore",
    "cantor_pairing",
    "cantor_unpair",
    "auto_label",
]
