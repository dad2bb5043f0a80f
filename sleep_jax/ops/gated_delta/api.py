"""Public entry points of the gated delta rule (PROVISIONAL: reference only).

The chunked and Pallas implementations and full input validation are being
added; until then every impl resolves to the per-token reference.
"""
from __future__ import annotations

import enum

import jax

from sleep_jax.ops.gated_delta import reference


class Impl(enum.Enum):
  AUTO = "auto"
  REFERENCE = "reference"
  CHUNKED = "chunked"
  PALLAS = "pallas"


def gated_delta_rule(q, k, v, log_alpha, beta, *, initial_state=None, scale=None, impl="auto",
                     chunk_size=64):
  """See ``reference.gated_delta_rule_reference`` for the math."""
  return reference.gated_delta_rule_reference(q, k, v, log_alpha, beta, initial_state=initial_state,
                                              scale=scale, chunk_size=chunk_size)


def gated_delta_step(q, k, v, log_alpha, beta, state, *, scale=None):
  """One decoding step; see ``reference.gated_delta_step_reference``."""
  return reference.gated_delta_step_reference(q, k, v, log_alpha, beta, state, scale=scale)
