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


class _Source:
  """grain random-access source of single copy-task examples (module level: picklable)."""

  def __init__(self, n: int = 64, poison_index: int | None = None):
    self.n = n
    self.poison_index = poison_index

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    ex = {k: v[0] for k, v in make_batch(1000 + int(i), 1).items()}
    ex["index"] = np.int32(i)
    return ex


def make_grain_iter(batch_size: int, seed: int = 0, n: int = 64):
  """A shuffled, repeating grain pipeline; its iterator has get_state()/set_state()."""
  import grain
  ds = grain.MapDataset.source(_Source(n)).seed(seed).shuffle().repeat(None).batch(batch_size,
                                                                                    drop_remainder=True)
  return iter(ds.to_iter_dataset())


class PoisonAt:
  """Wraps a batch iterator and poisons the batch of one step (NaN loss or NaN gradients)."""

  def __init__(self, it, step: int, what: str):
    self.it, self.step, self.what, self.i = it, step, what, 0

  def __iter__(self):
    return self

  def __next__(self):
    b = dict(next(self.it))
    b["poison"] = np.full(b["tokens"].shape[:1], float(self.i == self.step), np.float32)
    if self.i == self.step and self.what == "loss":
      b["loss_mask"] = b["loss_mask"] * np.float32(np.nan)
    self.i += 1
    return b

  def get_state(self):
    return {"inner": self.it.get_state(), "i": self.i}

  def set_state(self, s):
    self.it.set_state(s["inner"])
    self.i = s["i"]


def poison_loss(model, batch):
  """tiny_loss plus a term whose value is 0 but whose gradient is NaN when batch['poison'] is set."""
  loss, aux = tiny_loss(model, batch)
  k = model.hidden.kernel[...]
  p = jnp.mean(batch["poison"])
  # Value 0 either way; d/dk is 0 * 0.5 / sqrt(1 - p): 0 when p = 0, NaN when p = 1.
  bad = jnp.sum(jnp.sqrt(jnp.abs(k * 0.0) + (1.0 - p))) - k.size * jnp.sqrt(1.0 - p)
  return loss + bad, aux


class CountingEvaluator:
  """A minimal Evaluator: token accuracy and answer accuracy over the loss mask."""

  def __init__(self):
    self.hit = 0.0
    self.n = 0.0

  def update(self, batch, predictions, token_loss):
    m = np.asarray(batch["loss_mask"]) > 0
    self.hit += float(np.sum((np.asarray(predictions) == np.asarray(batch["targets"])) & m))
    self.n += float(np.sum(m))

  def result(self):
    return {"accuracy": self.hit / max(self.n, 1.0)}
