"""Compute accounting: analytic FLOPs of the wake and sleep passes.

What runs (``windowed.run_window``, ``session.SleepSession``):

* **wake**: every window runs every block once over its tokens, plus the
  output projection when logits are computed; a streamed token runs every
  block once against the ring cache of ``L`` slots, plus the output
  projection.
* **sleep**: a window that slept for ``p`` passes (the paper's count, wake
  pass included, per example under adaptive sleep) adds ``p - 1`` passes of
  the looped core (each with the re-injection adapter, ``d x d`` per token,
  when ``ModelConfig.sleep_reinject`` is on, and the coda and output
  projection that read the predictions when adaptive sleep halts on them)
  and one more of the coda when ``p >= 2``; ``p = 1``
  (``N = 1``) and ``N = 0`` (forget the window) add nothing. A session that
  streamed a window token by token re-runs its wake pass (without the output
  projection) before the sleep passes, since the streamed hidden states are
  not kept; that re-run counts as sleep compute.

This module is the project's one FLOP count: the train step's ``sleep/*``
metrics (:func:`sequence_cost`), the serving session's accounting and the
launch sweep's compute axis and compute matching (:func:`sequence_flops`) all
read it.

Conventions: forward FLOPs, a multiply-add is 2 FLOPs; per token and block:

* attention: projections ``8 d H Dh`` (``2 d Dh (2 H + 2 Hkv)`` with
  ``Hkv`` grouped key/value heads, plus ``2 d H Dh`` for an output gate); scores and values ``4 H Dh S`` over the
  ``S`` key slots the dense kernel computes, masked ones included (the
  window's width, plus the kept prefix of ``L`` slots under sliding eviction;
  ``L`` ring slots when decoding);
* Gated DeltaNet: projections ``2 d H (2 Dk + 3 Dv + 2)`` (q, k, v, g, o, a,
  b; with ``Hk`` grouped key heads ``2 d (2 Hk Dk + H (3 Dv + 2))``), short
  convolution ``2 K H (2 Dk + Dv)`` (``2 K (2 Hk Dk + H Dv)``), recurrence ``8 H Dk Dv`` (decay,
  read ``S k``, rank-one write, read ``S q``: the per-token form; the chunked
  kernels spend somewhat more);
* SwiGLU ``6 d F``; output projection ``2 d V`` per token;
* Canon layers (``ModelConfig.canon_size = c > 0``, every block): two
  depthwise convolutions over the ``d`` channels, ``2 c d`` each.

Norms, activations, gates, softmax, RoPE, residual additions and the embedding
lookup are not counted. ``matmul_only=True`` drops the convolutions (the GDN's
and the Canon layers') and the recurrence's decay term: that is exactly the
``dot_general`` FLOPs of the program with the reference gated delta rule,
which :func:`jaxpr_matmul_flops` counts and the tests compare against.

Training (:func:`sequence_flops`): forward + backward, backward = 2 x
forward, for every pass that gradients flow through (``grad_passes``
truncates the sleep passes' backward); ``replay`` costs what refinement costs
(it changes only the core's input). Rematerialisation is not counted: it is an
implementation choice that does not change the model's compute. Why analytic,
not XLA's ``cost_analysis``: the sleep passes are ``lax.scan`` loops, whose body
XLA counts once whatever the trip count, so ``N = 4`` would look as cheap as
``N = 1``.

Adaptive sleep is counted per example (each example's own passes). The
batched masked scan executes, per window, the largest count in the batch for
every example (halted examples compute and discard) unless the whole batch has
halted.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sleep_jax.config import ModelConfig, SleepConfig


def window_spans(length: int, window: int) -> tuple[tuple[int, int], ...]:
  """``[(start, stop), ...]`` of consecutive windows of ``window`` tokens (last may be short)."""
  if window < 1:
    raise ValueError(f"window (L) must be >= 1, got {window}")
  return tuple((s, min(s + window, length)) for s in range(0, length, window))


def block_flops(config: ModelConfig, kind: str, keys: int, *, matmul_only: bool = False) -> float:
  """Forward FLOPs of one block for one token.

  Args:
    config: the model.
    kind: "attn" or "gdn".
    keys: key slots each attention query is scored against (ignored for GDN).
    matmul_only: count matrix products only (see the module docstring).

  Returns:
    FLOPs (mixer and MLP).

  Raises:
    ValueError: for an unknown block kind.
  """
  d = config.d_model
  mlp = 6 * d * config.mlp_width
  canon = 0 if matmul_only else 2 * (2 * config.canon_size * d)  # Canon-A and Canon-C (0 when off)
  if kind == "attn":
    hd = config.n_heads * config.head_dim
    kv = config.num_kv_heads * config.head_dim  # grouped-query heads project fewer keys and values
    proj = 2 * d * (2 * hd + 2 * kv) + (2 * d * hd if config.attn_output_gate else 0)
    return float(proj + 4 * hd * keys + mlp + canon)
  if kind == "gdn":
    h, dk, dv = config.num_gdn_heads, config.gdn_head_dim, config.gdn_v_dim
    hk = config.num_gdn_key_heads  # grouped value heads: q and k have hk heads
    proj = 2 * d * (2 * hk * dk + 3 * h * dv + 2 * h)
    if matmul_only:
      return float(proj + 6 * h * dk * dv + mlp)
    conv = 2 * config.conv_size * (2 * hk * dk + h * dv)
    return float(proj + conv + 8 * h * dk * dv + mlp + canon)
  raise ValueError(f"unknown block kind {kind!r}")


def blocks_flops(config: ModelConfig, start: int, stop: int, keys: int, *, matmul_only: bool = False) -> float:
  """Forward FLOPs per token of blocks ``[start, stop)``."""
  return sum(block_flops(config, k, keys, matmul_only=matmul_only) for k in config.block_types[start:stop])


def unembed_flops(config: ModelConfig) -> float:
  """Output projection FLOPs per token."""
  return float(2 * config.d_model * config.vocab_size)


@dataclasses.dataclass(frozen=True)
class WindowFlops:
  """Forward FLOPs of one example over one window.

  Attributes:
    width: tokens in the window.
    stack: one pass of every block (the wake pass without the output projection).
    unembed: the output projection over the window.
    core: one pass of the looped core.
    coda: one pass of the coda.
    sleep_extra: what each sleep pass runs besides the core: the input
      re-injection adapter (``ModelConfig.sleep_reinject``) and, when
      adaptive sleep halts on the predictions (``SleepConfig.halt_measure``),
      the coda and output projection that read them; 0 by default.
  """
  width: int
  stack: float
  unembed: float
  core: float
  coda: float
  sleep_extra: float = 0.0

  @property
  def sleep_pass(self) -> float:
    """One sleep pass: the core and :attr:`sleep_extra`."""
    return self.core + self.sleep_extra

  @property
  def wake(self) -> float:
    """The wake pass with its logits."""
    return self.stack + self.unembed

  def sleep(self, passes):
    """Sleep FLOPs of ``passes`` (the paper's count; an int or an array): ``(p - 1) sleep_pass + coda`` for
    ``p >= 2``."""
    extra = passes - 1
    return (extra * self.sleep_pass + self.coda) * (extra > 0) + 0.0  # + 0.0: no -0.0 where p = 0


def window_flops(config: ModelConfig, sleep: SleepConfig, width: int, *, matmul_only: bool = False) -> WindowFlops:
  """:class:`WindowFlops` of a window of ``width`` tokens (keys: the window, plus ``L`` kept under sliding)."""
  keys = width + (sleep.window if sleep.eviction == "sliding" else 0)
  c0, c1 = config.core_range
  per = lambda a, z: width * blocks_flops(config, a, z, keys, matmul_only=matmul_only)
  n = len(config.block_types)
  extra = 2.0 * width * config.d_model ** 2 if config.sleep_reinject != "none" else 0.0
  if sleep.adaptive and sleep.halt_measure != "fast_weights":
    extra += per(c1, n) + width * unembed_flops(config)
  return WindowFlops(width=width, stack=per(0, n), unembed=width * unembed_flops(config), core=per(c0, c1),
                     coda=per(c1, n), sleep_extra=extra)


def decode_flops(config: ModelConfig, sleep: SleepConfig, *, matmul_only: bool = False) -> float:
  """Forward FLOPs of one streamed token (every block against ``L`` ring slots, plus the logits)."""
  n = len(config.block_types)
  return blocks_flops(config, 0, n, sleep.window, matmul_only=matmul_only) + unembed_flops(config)


def sequence_cost(config: ModelConfig, sleep: SleepConfig, length: int, passes, *, with_logits: bool = True,
                  matmul_only: bool = False) -> dict[str, jax.Array]:
  """Per-example compute of ``windowed_forward`` from the passes it reports.

  Args:
    config: the model.
    sleep: the sleep configuration the forward ran with.
    length: ``T``.
    passes: ``[B, n_windows]`` int, ``WindowedOutput.passes`` (0: the window
      did not sleep).
    with_logits: the wake passes computed logits.
    matmul_only: count matrix products only (see the module docstring).

  Returns:
    ``[B]`` float32 arrays: ``wake_flops``, ``sleep_flops``, ``sleep_passes``
    (passes summed over the windows that slept), ``sleep_windows`` (windows
    that slept) and ``n_passes`` (the configured ``N``, or the adaptive cap).
  """
  return _sequence_cost(lambda width: window_flops(config, sleep, width, matmul_only=matmul_only), sleep, length,
                        passes, with_logits=with_logits)


def _sequence_cost(flops_of_window, sleep: SleepConfig, length: int, passes, *, with_logits: bool):
  passes = jnp.asarray(passes)
  spans = window_spans(length, sleep.window)
  if passes.shape[-1] != len(spans):
    raise ValueError(f"passes must have one column per window ({len(spans)}), got shape {passes.shape}")
  b = passes.shape[0]
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  out = {"sleep_passes": f32(jnp.sum(passes, axis=1)), "sleep_windows": f32(jnp.sum(passes > 0, axis=1)),
         "n_passes": jnp.full((b,), sleep.max_n_passes, jnp.float32)}
  if flops_of_window is None:
    return out
  wake = 0.0
  slept = jnp.zeros((b,), jnp.float32)
  for w, (a, z) in enumerate(spans):
    wf = flops_of_window(z - a)
    wake += wf.wake if with_logits else wf.stack
    slept = slept + wf.sleep(passes[:, w].astype(jnp.float32))
  return {"wake_flops": jnp.full((b,), wake, jnp.float32), "sleep_flops": slept, **out}


def model_flops(model, sleep: SleepConfig):
  """``(window_flops(width), decode_flops)`` of a sleepable model, or ``(None, None)`` if it cannot count.

  A model counts with its ``ModelConfig`` (``HybridLM``), or with methods
  ``window_flops(sleep, width) -> WindowFlops`` and ``decode_flops(sleep) ->
  float`` of its own (``sleep_jax.protocol``).
  """
  config = getattr(model, "config", None)
  if isinstance(config, ModelConfig):
    return (lambda width: window_flops(config, sleep, width)), decode_flops(config, sleep)
  wf, df = getattr(model, "window_flops", None), getattr(model, "decode_flops", None)
  if callable(wf) and callable(df):
    return (lambda width: wf(sleep, width)), float(df(sleep))
  return None, None


def model_sequence_cost(model, sleep: SleepConfig, length: int, passes, *,
                        with_logits: bool = True) -> dict[str, jax.Array]:
  """:func:`sequence_cost` of any sleepable model (``sleep_jax.protocol``).

  Returns:
    The same ``[B]`` arrays; without a way to count FLOPs (see
    :func:`model_flops`) only ``sleep_passes``, ``sleep_windows`` and
    ``n_passes`` (the trainer then reports zero FLOPs).
  """
  flops_of_window, _ = model_flops(model, sleep)
  return _sequence_cost(flops_of_window, sleep, length, passes, with_logits=with_logits)


@dataclasses.dataclass(frozen=True)
class SequenceFlops:
  """FLOPs of one training sequence.

  Attributes:
    forward: forward FLOPs (what evaluation runs: ``n_passes``).
    train: forward + backward FLOPs (the expectation over the draw when
      training draws ``N``, ``SleepConfig.n_passes_train`` /
      ``n_passes_train_mean``, and a detached prefix,
      ``detach_passes_train``).
    seq_len: tokens per sequence ``T``.
  """
  forward: float
  train: float
  seq_len: int

  @property
  def train_per_token(self) -> float:
    return self.train / self.seq_len


def _fixed_n_flops(config: ModelConfig, sleep: SleepConfig, schedule: Sequence[bool], length: int) -> SequenceFlops:
  spans = window_spans(length, sleep.window)
  if len(schedule) != len(spans):
    raise ValueError(f"schedule has {len(schedule)} entries for {len(spans)} windows of {sleep.window} "
                     f"in {length} tokens")
  n = sleep.n_passes
  grad_extra = n - 1 if sleep.grad_passes is None else min(n - 1, sleep.grad_passes)
  forward = train = 0.0
  for (a, z), sleeps in zip(spans, schedule):
    wf = window_flops(config, sleep, z - a)
    slept = wf.sleep(n) if sleeps else 0.0
    forward += wf.wake + slept
    # Sleep passes before the last ``grad_passes`` run forward only (no backward).
    no_grad = (n - 1 - grad_extra) * wf.sleep_pass if sleeps and n >= 2 else 0.0
    train += 3 * (wf.wake + slept) - 2 * no_grad
  return SequenceFlops(forward=forward, train=train, seq_len=length)


def sequence_flops(config: ModelConfig, sleep: SleepConfig, schedule: Sequence[bool], length: int) -> SequenceFlops:
  """Forward and training FLOPs of one sequence under Algorithm 1 (see the module docstring).

  Args:
    config: the model.
    sleep: the sleep configuration (window ``L``, passes ``N``, eviction,
      ``grad_passes``, and ``n_passes_train`` for a drawn ``N``).
    schedule: one bool per window, True where the window sleeps.
    length: ``T``.

  Returns:
    A :class:`SequenceFlops`; with ``n_passes_train`` its ``train`` is the
    expectation under the draw's weights (not the realised draws) and its
    ``forward`` that of ``n_passes``.

  Raises:
    ValueError: if ``schedule`` does not have one entry per window.
  """
  out = _fixed_n_flops(config, sleep, schedule, length)
  if sleep.varies_per_step:
    values, probs = sleep.n_passes_train_distribution() or ((sleep.n_passes,), (1.0,))
    prefixes = range((sleep.detach_passes_train or 0) + 1)
    train = sum(prob / len(prefixes) * _fixed_n_flops(config, sleep.with_draw(n, p), schedule, length).train
                for n, prob in zip(values, probs) if prob > 0 for p in prefixes)
    out = dataclasses.replace(out, train=train)
  return out


# -- counting from the program (the reference the analytic count is tested against) ----------------
def _dot_flops(eqn) -> float:
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  contract = math.prod(lhs[i] for i in lc)
  batch = math.prod(lhs[i] for i in lb)
  lfree = math.prod(d for i, d in enumerate(lhs) if i not in lc and i not in lb)
  rfree = math.prod(d for i, d in enumerate(rhs) if i not in rc and i not in rb)
  return 2.0 * batch * lfree * rfree * contract


def jaxpr_matmul_flops(jaxpr) -> float:
  """``dot_general`` FLOPs of a (closed) jaxpr: ``scan`` bodies count ``length`` times, ``cond`` its
  dearest branch, a ``while`` body once (its trip count is unknown)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "scan":
      total += eqn.params["length"] * jaxpr_matmul_flops(eqn.params["jaxpr"])
    elif name == "cond":
      total += max(jaxpr_matmul_flops(b) for b in eqn.params["branches"])
    elif name == "while":
      total += jaxpr_matmul_flops(eqn.params["body_jaxpr"])
    else:
      for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is not None and hasattr(getattr(sub, "jaxpr", sub), "eqns"):
          total += jaxpr_matmul_flops(sub)
          break
  return total


# -- memory of the train state -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StateMemory:
  """Bytes of a training run's parameters, gradients and optimizer moments on one device (float32).

  Attributes:
    params: the parameters held between steps (all of them, or this device's
      split under FSDP).
    params_full: all parameters (what a step gathers under FSDP).
    grads: the gradient, whole on each device until it is reduced.
    optimizer: the optimizer moments held (AdamW two per parameter, Muon one).
    n_devices: devices in the data mesh.
    fsdp: parameters and optimizer state split over the devices
      (``TrainConfig.fsdp``); otherwise replicated on each.
  """
  params: int
  params_full: int
  grads: int
  optimizer: int
  n_devices: int = 1
  fsdp: bool = False

  @property
  def at_rest(self) -> int:
    """Between steps: parameters and optimizer state."""
    return self.params + self.optimizer

  @property
  def peak(self) -> int:
    """During a step, activations aside: the at-rest state plus the whole gradient and, under FSDP, the
    gathered parameters (the forward and backward pass read them whole)."""
    return self.at_rest + self.grads + (self.params_full if self.fsdp else 0)


def state_memory(config: ModelConfig, *, optimizer: str = "muon_adamw", n_devices: int = 1,
                 fsdp: bool = False) -> StateMemory:
  """Per-device bytes of the parameters, gradients and optimizer moments of a ``HybridLM``.

  Exact for the shapes (the model is built abstractly, ``nnx.eval_shape``) and
  the optimizer's routing (``sleep_jax.train.optimizer``: Muon for hidden 2-D
  matrices with one moment, AdamW with two for the rest); under ``fsdp`` a
  leaf splits as ``train.parallel.fsdp_spec`` splits it. Activations are not
  included: they depend on the batch, the window and the remat settings (the
  compiled step's memory analysis measures them, ``launch.paper_cost``).

  Args:
    config: the model.
    optimizer: ``"muon_adamw"`` or ``"adamw"`` (``OptimizerConfig.kind``).
    n_devices: devices in the data mesh.
    fsdp: parameters and optimizer state split over the devices.

  Returns:
    A :class:`StateMemory`.
  """
  from flax import nnx

  from sleep_jax.model import HybridLM
  from sleep_jax.train import optimizer as opt_lib
  from sleep_jax.train import parallel
  from sleep_jax.train.config import OptimizerConfig

  abstract = nnx.eval_shape(lambda: HybridLM(config, rngs=nnx.Rngs(0)))
  params = nnx.split(abstract, nnx.Param, ...)[1]
  leaves = jax.tree.leaves(params)
  labels = jax.tree.leaves(opt_lib.param_labels(params, OptimizerConfig(kind=optimizer)))
  full = lambda x: 4 * math.prod(x.shape)
  split = lambda x: parallel.DATA_AXIS in tuple(parallel.fsdp_spec(x.shape, n_devices))
  held = lambda x: full(x) // n_devices if fsdp and split(x) else full(x)
  moments = lambda label: 1 if optimizer == "muon_adamw" and label == opt_lib.MUON else 2
  total = sum(full(x) for x in leaves)
  return StateMemory(params=sum(held(x) for x in leaves), params_full=total, grads=total,
                     optimizer=sum(held(x) * moments(lab) for x, lab in zip(leaves, labels)),
                     n_devices=n_devices, fsdp=fsdp)
