"""Where one Gated DeltaNet block's training time goes: ``python -m launch.bench gdn_block [--rounds R]``.

At the Rule 110 paper shape's GDN block (B = 32, T = 100, width 64, 2 heads
of 32, chunk 16: the hybrid N = 1 step runs two of these over the whole
sequence), times forward and forward + backward (process CPU time per call,
interleaved rounds, the fastest round kept) of:

- ``block``: the whole mixer (projections, conv, gates, the chunked rule,
  gated output norm, output projection), gradients for every parameter and
  the input;
- ``block, rule stubbed``: the same with the gated delta rule replaced by an
  elementwise stand-in of the same shapes, so the difference is what the rule
  costs inside the block;
- ``rule alone``: the chunked rule on inputs of the block's shapes, gradients
  for all five inputs;
- ``conv alone``: the block's causal depthwise convolution and SiLU.

Prints milliseconds and each row's share of the block's forward + backward.
The sum of the parts against the block shows whether the block costs more
than its parts (an interaction in XLA's fusion or layout) or just their sum.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import jax
import jax.numpy as jnp
from flax import nnx

from sleep_jax import ops
from sleep_jax.nn import gated_deltanet as gdn_lib

B, T, D, H, DK = 32, 100, 64, 2, 32


@contextlib.contextmanager
def stubbed_rule():
  """Replaces the gated delta rule, as the block calls it, by an elementwise stand-in."""
  def stand_in(q, k, v, log_alpha, beta, *, initial_state=None, **_):
    return v * beta[..., None] * jnp.exp(log_alpha)[..., None] + q * k, initial_state
  saved = gdn_lib.ops.gated_delta_rule
  gdn_lib.ops.gated_delta_rule = stand_in
  try:
    yield
  finally:
    gdn_lib.ops.gated_delta_rule = saved


def _block_fns(stub: bool):
  module = gdn_lib.GatedDeltaNet(D, H, DK, DK, conv_size=4, impl="chunked", chunk_size=16, rngs=nnx.Rngs(0))
  graph, params = nnx.split(module)
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  x = jax.random.normal(keys[0], (B, T, D))
  r = jax.random.normal(keys[1], (B, T, D))
  s0 = jnp.zeros((B, H, DK, DK))

  def loss(params, x):
    y, s = nnx.merge(graph, params)(x, s0)
    return jnp.sum(y * r) + jnp.sum(s)

  with stubbed_rule() if stub else contextlib.nullcontext():
    fwd = jax.jit(loss).lower(params, x).compile()
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x).compile()
  return fwd, grad, (params, x)


def _rule_fns():
  ks = jax.random.split(jax.random.PRNGKey(2), 6)
  unit = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)
  args = (unit(jax.random.normal(ks[0], (B, T, H, DK))), unit(jax.random.normal(ks[1], (B, T, H, DK))),
          jax.random.normal(ks[2], (B, T, H, DK)), -jax.nn.softplus(jax.random.normal(ks[3], (B, T, H))),
          jax.nn.sigmoid(jax.random.normal(ks[4], (B, T, H))))
  r = jax.random.normal(ks[5], (B, T, H, DK))
  s0 = jnp.zeros((B, H, DK, DK))

  def loss(*a):
    o, s = ops.gated_delta_rule(*a, initial_state=s0, impl="chunked", chunk_size=16)
    return jnp.sum(o * r) + jnp.sum(s)

  fwd = jax.jit(loss).lower(*args).compile()
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4))).lower(*args).compile()
  return fwd, grad, args


def _conv_fns():
  channels = 2 * H * DK + H * DK
  ks = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(ks[0], (B, T, channels))
  w = jax.random.normal(ks[1], (4, channels))
  r = jax.random.normal(ks[2], (B, T, channels))

  def loss(x, w):
    return jnp.sum(jax.nn.silu(gdn_lib.causal_conv(x, w)) * r)

  return jax.jit(loss).lower(x, w).compile(), jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile(), (x, w)


def _cpu_ms(fn, args, calls: int) -> float:
  jax.block_until_ready(fn(*args))
  t0 = time.process_time()
  out = None
  for _ in range(calls):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.process_time() - t0) / calls * 1e3


def main(argv) -> int:
  p = argparse.ArgumentParser(prog="launch.bench gdn_block", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the fastest is kept)")
  p.add_argument("--calls", type=int, default=20, help="calls per variant per round")
  args = p.parse_args(argv)
  variants = {"block": _block_fns(False), "block, rule stubbed": _block_fns(True), "rule alone": _rule_fns(),
              "conv alone": _conv_fns()}
  best = {name: [float("inf"), float("inf")] for name in variants}
  for _ in range(args.rounds):
    for name, (fwd, grad, a) in variants.items():
      best[name][0] = min(best[name][0], _cpu_ms(fwd, a, args.calls))
      best[name][1] = min(best[name][1], _cpu_ms(grad, a, args.calls))
  whole = best["block"][1]
  print(f"GDN block at B={B}, T={T}, d={D}, {H} heads of {DK}, chunk 16; CPU ms per call "
        f"(fastest of {args.rounds} rounds of {args.calls})")
  print(f"{'variant':<22}{'fwd':>8}{'fwd+bwd':>10}{'of block':>10}")
  for name, (f, g) in best.items():
    print(f"{name:<22}{f:8.1f}{g:10.1f}{g / whole:10.2f}")
  parts = best["block, rule stubbed"][1] + best["rule alone"][1]
  print(f"stubbed block + rule alone = {parts:.1f} ms against the block's {whole:.1f} ms "
        f"(ratio {whole / parts:.2f}; 1.00 means the block costs the sum of its parts)")
  return 0
