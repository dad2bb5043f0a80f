"""A windowed forward with the Pallas kernels (interpreted on CPU) equals the chunked form's."""
import dataclasses

import jax
import numpy as np
from flax import nnx

from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.model import HybridLM
from sleep_jax.testing import assert_close
from sleep_jax.windowed import windowed_forward


def test_windowed_forward_pallas_interpret_equals_chunked():
  # Tiny on purpose (d 16, T 8, L 4, N 2, chunk 16): the interpreted kernel is slow on CPU. The first window
  # sleeps (its mask is zero), the second predicts; hard eviction, so the prediction reads the fast weights only.
  chunked = ModelConfig(vocab_size=7, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8, gdn_head_dim=8,
                        gdn_impl="chunked", gdn_chunk_size=16)
  tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 8), 0, 7), np.int32)
  mask = np.zeros((2, 8), np.float32)
  mask[:, 5:] = 1.0
  sleep = SleepConfig(window=4, n_passes=2)
  outs = {}
  for impl in ("chunked", "pallas"):
    model = HybridLM(dataclasses.replace(chunked, gdn_impl=impl), rngs=nnx.Rngs(0))  # the same parameters
    graphdef, state = nnx.split(model)
    # Jitted: the interpreted kernel run eagerly dispatches every grid step on its own, many times slower.
    run = jax.jit(lambda state: windowed_forward(nnx.merge(graphdef, state), tokens, mask, sleep,
                                                 sleep_schedule=(True, False)))
    outs[impl] = run(state)
  assert np.asarray(outs["pallas"].passes).tolist() == [[2, 0]] * 2
  assert_close(outs["pallas"].logits, outs["chunked"].logits, what="logits, pallas vs chunked")
  for a, b in zip(jax.tree.leaves(outs["pallas"].fast_weights), jax.tree.leaves(outs["chunked"].fast_weights)):
    assert_close(a, b, what="fast weights, pallas vs chunked")
  # The comparison has teeth: the sleep passes move the logits well beyond the tolerance.
  awake = windowed_forward(HybridLM(chunked, rngs=nnx.Rngs(0)), tokens, mask, dataclasses.replace(sleep, n_passes=1))
  assert float(np.abs(np.asarray(awake.logits) - np.asarray(outs["chunked"].logits)).max()) > 1e-3
