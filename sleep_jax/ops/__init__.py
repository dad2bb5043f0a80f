"""Fast-weight operators."""
from sleep_jax.ops.gated_delta.api import Impl, gated_delta_rule, gated_delta_step

__all__ = ["Impl", "gated_delta_rule", "gated_delta_step"]
