"""Algorithm 1 (windowed_forward / windowed_loss) against window-by-window references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.fast_weights import init_fast_weights
from sleep_jax.model import HybridLM
from sleep_jax.testing import assert_close
from sleep_jax.windowed import (CheckedSchedule, schedule_from_mask, serving_schedule, window_spans,
                                windowed_forward, windowed_loss)

VOCAB = 7


def _config(**kw):
  base = dict(vocab_size=VOCAB, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8, gdn_head_dim=8,
              gdn_impl="reference")
  base.update(kw)
  return ModelConfig(**base)


@pytest.fixture(scope="module")
def model():
  return HybridLM(_config(), rngs=nnx.Rngs(0))


def _jit(model, fn):
  """``fn(model, *args)`` jitted as a pure function of the model state (one
  compile instead of op-by-op eager dispatch, which is slower on CPU)."""
  graphdef, state = nnx.split(model)
  jitted = jax.jit(lambda st, *args: fn(nnx.merge(graphdef, st), *args))
  return lambda *args: jitted(state, *args)


def _tokens(b, t, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, VOCAB, dtype=jnp.int32)


def _by_hand(model, tokens, sleep, schedule, grad_passes=None, replay=False):
  """Independent reference: explicit Python loops over windows and passes.

  Wake pass over the whole stack for the logits; a sleeping window then redoes
  prelude once, the core N times, the coda once from its window-start state.
  """
  cfg = model.config
  nb = len(cfg.block_types)
  c0, c1 = cfg.core_range
  fw, prefixes, logits = init_fast_weights(cfg, tokens.shape[0]), None, []
  for w, (a, z) in enumerate(window_spans(tokens.shape[1], sleep.window)):
    pos = jnp.arange(a, z, dtype=jnp.int32)
    h0 = model.embed_tokens(tokens[:, a:z])
    kw = dict(prefixes=prefixes, window=sleep.window)
    h, fw_next, kv = model.run_blocks(h0, fw, pos, **kw)
    logits.append(model.unembed(h))
    if schedule[w]:
      h, f, kv_p = model.run_blocks(h0, fw, pos, start=0, stop=c0, **kw)
      h_in, kv_c = h, {}
      for n in range(sleep.n_passes):
        if grad_passes is not None and n == sleep.n_passes - grad_passes:
          h, f = jax.lax.stop_gradient((h, f))
        h, f, kv_c = model.run_blocks(h_in if replay else h, f, pos, start=c0, stop=c1, **kw)
      _, fw_next, kv_d = model.run_blocks(h, f, pos, start=c1, stop=nb, **kw)
      kv = {**kv_p, **kv_c, **kv_d}
    fw = fw_next
    if sleep.eviction == "sliding":
      prefixes = tuple(kv[i] for i in range(len(kv)))
  return jnp.concatenate(logits, axis=1), fw


def test_window_spans_and_schedules():
  assert window_spans(10, 4) == ((0, 4), (4, 8), (8, 10))
  assert serving_schedule(10, 4) == (True, True, False)
  assert serving_schedule(8, 4) == (True, True)
  mask = np.zeros((2, 10))
  mask[1, 9] = 1
  mask[0, 5] = 1
  assert schedule_from_mask(mask, 4) == (True, False, False)
  # Auxiliary targets (depth < 0) do not keep a window awake; scored ones (depth >= 0) do.
  depth = np.where(mask > 0, 2, -1)
  aux = mask.copy()
  aux[0, 1] = 1
  assert schedule_from_mask(aux, 4) == (False, False, False)
  assert schedule_from_mask(aux, 4, depth) == (True, False, False)
  depth[0, 1] = 0
  assert schedule_from_mask(aux, 4, depth) == (False, False, False)


class _Batches:
  def __init__(self, masks):
    self.masks, self.i = masks, 0

  def __next__(self):
    self.i += 1
    return {"loss_mask": self.masks[self.i - 1]}

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = state["i"]


def test_checked_schedule_passes_matching_batches_and_rejects_others():
  ok, other = np.zeros((2, 8)), np.zeros((2, 8))
  ok[:, 7] = 1  # windows of 4: the first sleeps, the second does not
  other[0, 1] = 1  # the first does not sleep, the second does
  it = CheckedSchedule(_Batches([ok, ok, other]), (True, False), 4)
  assert next(it)["loss_mask"] is ok and it.get_state() == {"i": 1}
  it.set_state({"i": 2})
  with pytest.raises(ValueError, match=r"windows \(False, True\) differ from the task's \(True, False\)"):
    next(it)
  from launch import experiment
  assert experiment.CheckedSchedule is CheckedSchedule  # its old home still works


def test_checked_schedule_ignores_auxiliary_targets():
  mask, depth = np.zeros((2, 8)), np.full((2, 8), -1)
  mask[:, 7], depth[:, 7] = 1, 3  # the scored answer: the last window stays awake
  mask[0, 2] = 1  # an auxiliary target in the first window of one row only
  batch = {"loss_mask": mask, "depth": depth}
  assert next(CheckedSchedule(iter([batch]), (True, False), 4)) is batch
  depth = depth.copy()
  depth[0, 2] = 0  # the same position scored: that row's first window is awake
  with pytest.raises(ValueError, match="differ from the task's"):
    next(CheckedSchedule(iter([{"loss_mask": mask, "depth": depth}]), (True, False), 4))


def test_n1_hard_equals_window_by_window(model):
  tokens = _tokens(2, 6)
  sleep = SleepConfig(window=3, n_passes=1)
  out = _jit(model, lambda m, t: windowed_forward(m, t, jnp.ones((2, 6)), sleep))(tokens)

  def by_hand(m, tokens):
    fw, ref = init_fast_weights(m.config, 2), []
    for a, z in window_spans(6, 3):
      lg, fw = m(tokens[:, a:z], fw, positions=jnp.arange(a, z, dtype=jnp.int32))
      ref.append(lg)
    return jnp.concatenate(ref, 1), fw, m(tokens)[0]

  ref_logits, ref_fw, full = _jit(model, by_hand)(tokens)
  assert_close(ref_logits, out.logits, what="logits")
  assert_close(ref_fw, out.fast_weights, what="fast weights")
  # Eviction matters: one window over everything differs.
  assert float(jnp.abs(full - out.logits).max()) > 1e-3


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_sleep_equals_explicit_passes(model, eviction):
  tokens = _tokens(2, 6, seed=1)
  sleep = SleepConfig(window=3, n_passes=3, eviction=eviction)
  mask = np.zeros((2, 6), np.float32)
  mask[:, 4:] = 1.0
  out = _jit(model, lambda m, t: windowed_forward(m, t, mask, sleep))(tokens)
  ref_logits, ref_fw = _jit(model, lambda m, t: _by_hand(m, t, sleep, (True, False)))(tokens)
  assert_close(ref_fw, out.fast_weights, what="fast weights after sleep")
  assert_close(ref_logits, out.logits, what="logits")
  # Sleeping changes the memory: without it (N=1) the fast weights differ.
  _, awake_fw = _jit(model, lambda m, t: _by_hand(m, t, sleep, (False, False)))(tokens)
  assert float(jnp.abs(awake_fw.states[0] - out.fast_weights.states[0]).max()) > 1e-4


@pytest.mark.parametrize("layout,prelude", [(("attn", "gdn"), 0), (("gdn", "attn", "gdn"), 1)])
def test_replay_rereads_the_window_each_pass(layout, prelude):
  # The replay control: every pass consumes the core's wake-pass input (not the
  # previous pass's output) while the fast weights keep accumulating.
  model = HybridLM(_config(layout=layout, prelude=prelude), rngs=nnx.Rngs(5))
  tokens = _tokens(2, 6, seed=4)
  schedule = (True, False)
  replay = SleepConfig(window=3, n_passes=3, replay=True)
  out = _jit(model, lambda m, t: windowed_forward(m, t, None, replay, sleep_schedule=schedule))(tokens)
  ref_logits, ref_fw = _jit(model, lambda m, t: _by_hand(m, t, replay, schedule, replay=True))(tokens)
  assert_close(ref_fw, out.fast_weights, what="fast weights after replayed sleep")
  assert_close(ref_logits, out.logits, what="logits")
  # It is a different computation from the paper's refinement.
  refine = SleepConfig(window=3, n_passes=3)
  base = _jit(model, lambda m, t: windowed_forward(m, t, None, refine, sleep_schedule=schedule))(tokens)
  assert float(jnp.abs(base.fast_weights.states[-1] - out.fast_weights.states[-1]).max()) > 1e-4


def test_prelude_core_coda_semantics():
  cfg = _config(layout=("gdn", "attn", "gdn"), prelude=1, coda=1)
  model = HybridLM(cfg, rngs=nnx.Rngs(3))
  tokens = _tokens(1, 4, seed=2)
  sleep = SleepConfig(window=2, n_passes=2, eviction="sliding")
  schedule = (True, False)
  out = _jit(model, lambda m, t: windowed_forward(m, t, None, sleep, sleep_schedule=schedule))(tokens)
  ref_logits, ref_fw = _jit(model, lambda m, t: _by_hand(m, t, sleep, schedule))(tokens)
  assert_close(ref_fw, out.fast_weights, what="fast weights")
  assert_close(ref_logits, out.logits, what="logits")


def test_traced_mask_under_jit_matches_static_schedule(model):
  tokens = _tokens(2, 6, seed=4)
  mask = np.zeros((2, 6), np.float32)
  mask[:, 4:] = 1.0
  batch = dict(tokens=tokens, targets=jnp.roll(tokens, -1, axis=1), loss_mask=jnp.asarray(mask))
  sleep = SleepConfig(window=3, n_passes=2, eviction="hard")
  traced_fn = _jit(model, lambda m, b: windowed_loss(m, b, sleep))
  traced = traced_fn(batch)
  static = _jit(model, lambda m, b: windowed_loss(m, b, sleep, sleep_schedule=(True, False)))(batch)
  assert_close(static[0], traced[0], what="loss")
  assert_close(static[1].fast_weights, traced[1].fast_weights, what="fast weights")
  # The mask decides: a loss token in window 1 stops it from sleeping.
  mask2 = mask.copy()
  mask2[0, 2] = 1.0
  batch2 = dict(batch, loss_mask=jnp.asarray(mask2))
  traced2 = traced_fn(batch2)
  assert float(jnp.abs(traced2[1].fast_weights.states[0] - traced[1].fast_weights.states[0]).max()) > 1e-4


def test_loss_aux_matches_manual_cross_entropy(model):
  tokens = _tokens(2, 6, seed=5)
  targets = jnp.roll(tokens, -1, axis=1)
  mask = np.zeros((2, 6), np.float32)
  mask[0, 4:] = 1.0
  mask[1, 5] = 1.0
  sleep = SleepConfig(window=3, n_passes=2)
  loss, aux = _jit(model, lambda m, b: windowed_loss(m, b, sleep))(
      dict(tokens=tokens, targets=targets, loss_mask=mask))
  logits = np.asarray(aux.logits, np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0] * mask
  assert_close(ce, aux.token_loss, what="token_loss")
  assert_close(ce.sum() / mask.sum(), loss, what="loss")
  assert float(aux.n_tokens) == 3.0
  np.testing.assert_array_equal(np.asarray(aux.predictions), logits.argmax(-1))
  assert aux.predictions.dtype == jnp.int32
  none = _jit(model, lambda m, t: windowed_forward(m, t, mask, sleep, return_logits="none"))(tokens)
  assert none.logits is None
  assert_close(aux.fast_weights, none.fast_weights, what="fast weights without logits")


def test_gradient_through_fast_weights_matches_finite_differences(model):
  """Directional derivatives of the windowed loss vs central differences.

  The loss sits in the last window only; with hard eviction the first windows
  reach it only through S, so derivatives wrt the initial fast weights and the
  parameters (one coordinate per tensor, where its gradient is largest) exercises the gradient through S across windows and
  through every sleep pass. float32 central differences with eps = 1e-2 carry a
  truncation error O(eps^2) and a rounding error ~1e-7 * |loss| / eps ~ 1e-5,
  so we compare at 2% relative (the float32_grad table row bounds
  autodiff-vs-autodiff error, not finite differences).
  """
  tokens = _tokens(2, 6, seed=6)
  targets = jnp.roll(tokens, -1, axis=1)
  mask = np.zeros((2, 6), np.float32)
  mask[:, 4:] = 1.0
  sleep = SleepConfig(window=3, n_passes=2)
  schedule = (True, False)
  graphdef, state = nnx.split(model)
  fw0 = init_fast_weights(model.config, 2)
  fw0 = jax.tree.map(lambda s: 0.3 * jax.random.normal(jax.random.key(7), s.shape), fw0)

  def loss_fn(state, fw):
    out = windowed_forward(nnx.merge(graphdef, state), tokens, mask, sleep, fast_weights=fw,
                           sleep_schedule=schedule)
    logz = jax.nn.logsumexp(out.logits, -1)
    picked = jnp.take_along_axis(out.logits, targets[..., None], -1)[..., 0]
    return jnp.sum((logz - picked) * mask) / mask.sum()

  value_and_grad = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))  # one compile serves both
  f = lambda *args: value_and_grad(*args)[0]
  _, (g_state, g_fw) = value_and_grad(state, fw0)
  eps = 1e-2
  checked = 0
  flat, treedef = jax.tree_util.tree_flatten_with_path((state, fw0))
  grads = jax.tree.leaves((g_state, g_fw))
  for i, ((path, x), g) in enumerate(zip(flat, grads)):
    name = jax.tree_util.keystr(path)
    if not any(key in name for key in ("embedding", "k_proj", "A_log", "q_proj", "states")):
      continue
    idx = np.unravel_index(np.argmax(np.abs(np.asarray(g))), g.shape)  # the largest-gradient coordinate
    leaves = [leaf for _, leaf in flat]
    plus, minus = list(leaves), list(leaves)
    plus[i], minus[i] = x.at[idx].add(eps), x.at[idx].add(-eps)
    numeric = (float(f(*jax.tree.unflatten(treedef, plus))) - float(f(*jax.tree.unflatten(treedef, minus)))) / (2 * eps)
    assert abs(float(g[idx])) > 1e-3, name
    np.testing.assert_allclose(float(g[idx]), numeric, rtol=2e-2, atol=1e-4, err_msg=name)
    checked += 1
  assert checked >= 5


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2])
def test_grad_passes_truncates_like_stop_gradient(model, k):
  tokens = _tokens(2, 6, seed=8)
  targets = jnp.roll(tokens, -1, axis=1)
  mask = np.zeros((2, 6), np.float32)
  mask[:, 4:] = 1.0
  sleep = SleepConfig(window=3, n_passes=3, grad_passes=k)
  graphdef, state = nnx.split(model)

  def ce(logits):
    logz = jax.nn.logsumexp(logits, -1)
    return jnp.sum((logz - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]) * mask)

  def ours(st):
    return ce(windowed_forward(nnx.merge(graphdef, st), tokens, mask, sleep).logits)

  def ref(st):
    return ce(_by_hand(nnx.merge(graphdef, st), tokens, sleep, (True, False), grad_passes=k)[0])

  g_ours = jax.jit(jax.grad(ours))(state)
  g_ref = jax.jit(jax.grad(ref))(state)
  assert_close(g_ref, g_ours, "float32_grad", what=f"grad_passes={k}")
  full = jax.jit(jax.grad(lambda st: ce(_by_hand(nnx.merge(graphdef, st), tokens, sleep, (True, False))[0])))(state)
  diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(g_ours)))
  assert diff > 1e-6  # truncation changed the gradient


def test_rows_on_different_sleep_schedules_raise_unless_a_schedule_is_given(model):
  tokens = _tokens(2, 6, seed=9)
  sleep = SleepConfig(window=3, n_passes=2)
  mask = np.zeros((2, 6), np.float32)
  mask[0, 5] = 1.0  # row 0 would sleep on window 0 only
  mask[1, 1] = 1.0  # row 1 would sleep on window 1 only
  for m in (mask, jnp.asarray(mask)):
    with pytest.raises(ValueError, match=r"window 0 \(tokens 0:3\).*rows \[0\].*rows \[1\].*sleep_schedule"):
      windowed_forward(model, tokens, m, sleep)
    with pytest.raises(ValueError, match="sleep_schedule"):
      windowed_loss(model, dict(tokens=tokens, targets=tokens, loss_mask=m), sleep)
  # An explicit schedule decides, and matches the reference by hand.
  out = _jit(model, lambda mdl, t: windowed_forward(mdl, t, mask, sleep, sleep_schedule=(False, False)))(tokens)
  ref_logits, _ = _jit(model, lambda mdl, t: _by_hand(mdl, t, sleep, (False, False)))(tokens)
  assert_close(ref_logits, out.logits, what="logits with an explicit schedule")
  # A traced mask cannot be read: the batch-wide rule (no window sleeps here) applies.
  traced = _jit(model, lambda mdl, t, m: windowed_forward(mdl, t, m, sleep))(tokens, jnp.asarray(mask))
  assert_close(ref_logits, traced.logits, what="logits with a traced mask")
  # Rows that agree are accepted: row 1's window 0 also holds a loss token.
  mask[1, 5] = 1.0
  mask[0, 1] = 1.0
  windowed_forward(model, tokens, mask, sleep, return_logits="none")


def test_bad_inputs(model):
  tokens = _tokens(2, 6)
  sleep = SleepConfig(window=3)
  with pytest.raises(ValueError, match="vocab_size"):
    windowed_forward(model, tokens.at[0, 0].set(VOCAB), None, sleep)
  with pytest.raises(ValueError, match="vocab_size"):
    windowed_forward(model, tokens.at[0, 0].set(-1), None, sleep)
  with pytest.raises(ValueError, match="loss_mask"):
    windowed_forward(model, tokens, jnp.ones((2, 5)), sleep)
  with pytest.raises(ValueError, match="loss_mask"):
    windowed_loss(model, dict(tokens=tokens, targets=tokens, loss_mask=jnp.ones((6, 2))), sleep)
  with pytest.raises(ValueError, match="targets"):
    windowed_loss(model, dict(tokens=tokens, targets=tokens[:, :3], loss_mask=jnp.ones((2, 6))), sleep)
  with pytest.raises(ValueError, match="tokens"):
    windowed_forward(model, tokens[0], None, sleep)
  with pytest.raises(ValueError, match="sleep_schedule"):
    windowed_forward(model, tokens, None, sleep, sleep_schedule=(True,))
  with pytest.raises(ValueError, match="return_logits"):
    windowed_forward(model, tokens, None, sleep, return_logits="some")
  with pytest.raises(ValueError, match="window"):
    SleepConfig(window=0)
  with pytest.raises(ValueError, match="n_passes"):
    SleepConfig(window=3, n_passes=-1)
  with pytest.raises(ValueError, match="block type"):
    _config(layout=("attn", "mamba"))
