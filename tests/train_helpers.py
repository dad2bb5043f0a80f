"""A tiny stand-in language model and data for trainer tests (no task or model dependency)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

VOCAB = 11
SEQ = 8


class TinyLM(nnx.Module):
  """Embed -> hidden matrix -> RMSNorm -> head; enough to route Muon and AdamW groups."""

  def __init__(self, rngs: nnx.Rngs, width: int = 16):
    self.embed = nnx.Embed(VOCAB, width, rngs=rngs)
    self.hidden = nnx.Linear(width, width, rngs=rngs)
    self.norm = nnx.RMSNorm(width, rngs=rngs)
    self.lm_head = nnx.Linear(width, VOCAB, use_bias=False, rngs=rngs)

  def __call__(self, tokens):
    h = self.embed(tokens)
    h = h + jnp.tanh(self.hidden(h))
    h = h + jnp.cumsum(h, axis=1) / (1 + jnp.arange(h.shape[1]))[None, :, None]
    return self.lm_head(self.norm(h))


def tiny_loss(model, batch):
  """Masked-mean cross entropy with the windowed_loss aux fields."""
  logits = model(batch["tokens"]).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
  mask = batch["loss_mask"]
  n = jnp.sum(mask)
  token_loss = nll * mask
  loss = jnp.sum(token_loss) / jnp.maximum(n, 1.0)
  return loss, {"token_loss": token_loss, "predictions": jnp.argmax(logits, -1).astype(jnp.int32),
                "n_tokens": n}


def make_batch(seed: int, batch_size: int, seq: int = SEQ) -> dict:
  """Copy-the-previous-token data with an uneven random loss mask."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, size=(batch_size, seq)).astype(np.int32)
  targets = np.concatenate([tokens[:, 1:], np.zeros((batch_size, 1), np.int32)], axis=1)
  mask = (rng.random((batch_size, seq)) < 0.4).astype(np.float32)
  mask[:, -1] = 0.0
  return {"tokens": tokens, "targets": targets, "loss_mask": mask}
