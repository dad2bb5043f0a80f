"""sleep_jax.array_typing: the opt-in runtime shape checks of the public API's jaxtyping annotations."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

from sleep_jax import array_typing as at
from sleep_jax.array_typing import Array, Float, Int32, typed


@pytest.fixture
def checks():
  was = at.runtime_checks_enabled()
  at.enable_runtime_checks()
  yield
  at.enable_runtime_checks(was)


@dataclasses.dataclass(frozen=True)
class _Out:
  y: Float[Array, "b t"]
  parts: tuple[Float[Array, "b"], ...]


@typed
def _mix(x: Float[Array, "b t d"], w: Float[Array, "d"], n: int = 1) -> _Out:
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  y = x @ w
  return _Out(y=y, parts=tuple(y[:, i] for i in range(y.shape[1])) + ((y[:1, 0],) if n == 7 else ()))


@typed
def _tokens(t: Int32[Array, "b t"]) -> Int32[Array, "b"]:
  return t[:, 0]


def test_matching_shapes_pass_and_one_axis_name_is_one_size(checks):
  out = _mix(jnp.ones((2, 3, 4)), jnp.ones((4,)))
  assert out.y.shape == (2, 3)
  with pytest.raises(TypeCheckError, match=r"_mix: argument w = float32\[5\] is not .*'d'.*x=float32\[2, 3, 4\]"):
    _mix(jnp.ones((2, 3, 4)), jnp.ones((5,)))  # d = 4 in x, 5 in w
  with pytest.raises(TypeCheckError, match=r"argument t = int8\[2, 3\]"):
    _tokens(jnp.ones((2, 3), jnp.int8))  # the dtype too
  with pytest.raises(TypeCheckError, match="argument n = '1'"):
    _mix(jnp.ones((2, 3, 4)), jnp.ones((4,)), "1")


def test_outputs_are_checked_field_by_field_and_item_by_item_against_the_inputs(checks):
  # n == 7 appends a part of batch 1 to parts of batch 2: only a check of every item of the
  # tuple[..., ...] field, in the memo of the inputs, can see it.
  with pytest.raises(TypeCheckError, match=r"the return value\.parts(\[3\] = float32\[1\]| = \(.*float32\[1\]\)) is"):
    _mix(jnp.ones((2, 3, 4)), jnp.ones((4,)), 7)


def test_the_function_own_value_error_comes_first(checks):
  with pytest.raises(ValueError, match="n must be >= 0"):
    _mix(jnp.ones((2, 3, 4)), jnp.ones((4,)), -1)


def test_off_nothing_is_checked():
  was = at.runtime_checks_enabled()
  at.enable_runtime_checks(False)
  try:
    assert _tokens(jnp.ones((2, 3), jnp.int8)).shape == (2,)
  finally:
    at.enable_runtime_checks(was)


def test_host_arrays_are_tokens_and_masks(checks):
  @typed
  def f(tokens: at.Tokens, mask: at.Mask | None) -> Int32[Array, "b"]:
    return jnp.asarray(tokens, jnp.int32)[:, 0]
  assert f(np.zeros((2, 3), np.int64), np.ones((2, 3), np.float32)).shape == (2,)
  with pytest.raises(TypeCheckError, match="argument mask"):
    f(np.zeros((2, 3), np.int64), np.ones((2, 4), np.float32))


def test_the_public_api_is_checked(checks):
  from sleep_jax.ops.gated_delta.api import gated_delta_step
  b, h, k, v = 2, 3, 4, 5
  q = jnp.ones((b, h, k)) / 2
  state = jnp.zeros((b, h, k, v), jnp.float32)
  o, new = gated_delta_step(q, q, jnp.ones((b, h, v)), -jnp.ones((b, h)), jnp.ones((b, h)) / 2, state)
  assert o.shape == (b, h, v) and new.dtype == jnp.float32
  assert gated_delta_step.__wrapped__.__name__ == "gated_delta_step"
