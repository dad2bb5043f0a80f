"""Fast-weight operators: the gated delta rule and its implementations."""
from sleep_jax.ops.gated_delta.api import Impl, gated_delta_rule, gated_delta_step, resolve_impl

__all__ = ["Impl", "gated_delta_rule", "gated_delta_step", "resolve_impl"]
