"""The core transforms against explicit references, each jitted and not (``chex.variants``).

A transform that only agrees with its reference under ``jit`` (or only
eagerly) hides a tracing bug: a Python branch on a traced value, a shape taken
from a concrete array, a host callback. Each test below runs the same
comparison in both variants:

* ``ops.gated_delta_rule``: the chunked (WY) form against the per-token oracle;
* ``sleep_consolidate``: the ``lax.scan`` of passes against a Python loop of
  ``blocks_fn`` calls, values and gradients;
* ``windowed_forward`` with ``N = 1`` and hard eviction: against one ordinary
  model call per window, carrying only the fast weights.
"""
import chex
import jax
import jax.numpy as jnp
from absl.testing import parameterized
from flax import nnx

import sleep_jax
from sleep_jax import ops
from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.fast_weights import init_fast_weights
from sleep_jax.model import HybridLM
from sleep_jax.testing import tolerance
from sleep_jax.windowed import window_spans

F32 = tolerance("float32")
F32_GRAD = tolerance("float32_grad")


def _rule_inputs(b, t, h, dk, dv, regime, seed=0):
  ks = jax.random.split(jax.random.key(seed), 6)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  q = unit(jax.random.normal(ks[0], (b, t, h, dk)))
  k = unit(jax.random.normal(ks[1], (b, t, h, dk)))
  v = jax.random.normal(ks[2], (b, t, h, dv))
  if regime == "strong_decay":  # cumulative log-decay far beyond exp's float32 range (~ -88) within a chunk
    log_alpha = -20.0 * jax.nn.sigmoid(jax.random.normal(ks[3], (b, t, h))) - 5.0
  else:
    log_alpha = -jax.nn.softplus(jax.random.normal(ks[3], (b, t, h)))
  beta = jax.nn.sigmoid(jax.random.normal(ks[4], (b, t, h)))
  s0 = 0.1 * jax.random.normal(ks[5], (b, h, dk, dv))
  return q, k, v, log_alpha, beta, s0


class GatedDeltaRuleTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  # (tests/test_gated_delta.py sweeps the regimes; here the point is jit vs eager.)
  @parameterized.named_parameters(("ordinary", "ordinary"), ("strong_decay", "strong_decay"))
  def test_chunked_matches_per_token_oracle(self, regime):
    # Odd length (not a multiple of the chunk) and a non-power-of-two key dim.
    b, t, h, dk, dv = 2, 37, 2, 12, 8
    inputs = _rule_inputs(b, t, h, dk, dv, regime)

    def run(impl):
      def fn(q, k, v, log_alpha, beta, s0):
        return ops.gated_delta_rule(q, k, v, log_alpha, beta, initial_state=s0, impl=impl, chunk_size=16)
      return self.variant(fn)(*inputs)

    o_ref, s_ref = run("reference")
    o_chk, s_chk = run("chunked")
    chex.assert_shape((o_ref, o_chk), (b, t, h, dv))
    chex.assert_shape((s_ref, s_chk), (b, h, dk, dv))
    chex.assert_trees_all_close((o_chk, s_chk), (o_ref, s_ref), atol=F32.atol, rtol=F32.rtol)


def _blocks_fn(h, fw):
  """A small nonlinear 'blocks' step over a pytree of fast weights."""
  write = jnp.einsum("td,te->de", jnp.tanh(h), h) / h.shape[0]
  fw = {"s": 0.8 * fw["s"] + 0.2 * write, "n": fw["n"] + 1.0}
  return jnp.tanh(h @ fw["s"] + 0.1 * h), fw


class SleepConsolidateTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("none", 0), ("three", 3))
  def test_scan_matches_python_loop(self, n):
    t, d = 5, 4
    h0 = jax.random.normal(jax.random.key(1), (t, d))
    fw0 = {"s": 0.1 * jax.random.normal(jax.random.key(2), (d, d)), "n": jnp.zeros(())}

    def looped(h, fw):
      for _ in range(n):
        h, fw = _blocks_fn(h, fw)
      return fw, h

    def scanned(h, fw):
      out = sleep_jax.sleep_consolidate(_blocks_fn, h, fw, n, return_hidden=True)
      return out.fast_weights, out.hidden

    got = self.variant(scanned)(h0, fw0)
    want = looped(h0, fw0)
    chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
    chex.assert_shape(got[1], (t, d))
    chex.assert_trees_all_close(got, want, atol=F32.atol, rtol=F32.rtol)
    self.assertEqual(float(got[0]["n"]), float(n))

    # Gradients reach the starting hidden states and fast weights through every pass.
    loss = lambda f: lambda h, fw: jnp.sum(f(h, fw)[0]["s"] ** 2) + jnp.sum(f(h, fw)[1])
    g_got = self.variant(jax.grad(loss(scanned), argnums=(0, 1)))(h0, fw0)
    g_want = jax.grad(loss(looped), argnums=(0, 1))(h0, fw0)
    chex.assert_trees_all_close(g_got, g_want, atol=F32_GRAD.atol, rtol=F32_GRAD.rtol)


class WindowedForwardTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_n1_hard_equals_one_model_call_per_window(self):
    vocab, b, t, window = 7, 2, 7, 3  # the last window is short
    config = ModelConfig(vocab_size=vocab, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8,
                         gdn_head_dim=8, gdn_impl="reference")
    graphdef, state = nnx.split(HybridLM(config, rngs=nnx.Rngs(0)))
    tokens = jax.random.randint(jax.random.key(3), (b, t), 0, vocab, dtype=jnp.int32)
    sleep = SleepConfig(window=window, n_passes=1, eviction="hard")

    def windowed(state, tokens):
      out = sleep_jax.windowed_forward(nnx.merge(graphdef, state), tokens, None, sleep)
      return out.logits, out.fast_weights

    def by_window(state, tokens):
      model = nnx.merge(graphdef, state)
      fw, logits = init_fast_weights(config, b), []
      for a, z in window_spans(t, window):
        lg, fw = model(tokens[:, a:z], fw, positions=jnp.arange(a, z, dtype=jnp.int32))
        logits.append(lg)
      return jnp.concatenate(logits, axis=1), fw

    got = self.variant(windowed)(state, tokens)
    want = jax.jit(by_window)(state, tokens)
    chex.assert_shape(got[0], (b, t, vocab))
    chex.assert_trees_all_equal_structs(got[1], want[1])
    chex.assert_trees_all_close(got, want, atol=F32.atol, rtol=F32.rtol)
    # Eviction matters: one call over the whole sequence differs.
    full, _ = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, tokens)
    self.assertGreater(float(jnp.max(jnp.abs(full - got[0]))), 1e-3)
