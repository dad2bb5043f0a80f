"""The sleep model, side by side: ``python -m launch.bench model [--quick] [--skip-decode] [--skip-train]
[--skip-stream]``.

(a) Per-token decode latency of the sleep model (``SleepSession``, hybrid
    attention/GDN, a ring KV cache of ``L`` slots) after contexts of 1k, 8k and
    64k tokens, beside a full-attention model of the same width and depth whose
    KV cache holds the whole context. The sleep model's context is produced by
    actually streaming the tokens through the session (whole windows: wake pass
    plus sleep on every window). The full-attention cache is filled with
    random keys/values at positions ``0..ctx-1``: its decode cost depends on the
    cache shape only, and prefilling 64k tokens through it would measure
    prefill, not decode. Prints latency per context and latency(ctx)/latency(1k)
    (target for the sleep model: <= 1.1 at 64k).

(b) Training-step time (jitted forward + backward of ``windowed_loss``) for
    ``N = 1, 2, 4`` on the Rule 110 paper shapes (T = 100, L = 24, 4 layers of
    width 256; four consolidation windows then a 4-token prediction window),
    beside the FLOP ratio. Two FLOP counts are printed: XLA's
    ``cost_analysis()`` (which counts a while-loop body once, so it misses the
    trip counts of the sleep-pass and window scans), and a count of the
    matmul FLOPs in the differentiated jaxpr with every ``scan`` body
    multiplied by its length (the one the ratio uses). Prints time ratio /
    FLOP ratio (target: within 1.15).

(c) Per-token latency of a stream that crosses many window boundaries: tokens
    fed one at a time to a ``SleepSession`` (B = 1), each timed until the
    session state is ready, so the token that fills a window pays for its
    sleep (re-running the window's wake pass, then the sleep passes). Prints
    p50 / p99 of the wake tokens and of the sleeping tokens separately, the
    amortised latency, and the session's compute accounting per token
    (``SleepSession.stats``: analytic wake and sleep FLOPs, passes per sleep).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.cost import jaxpr_matmul_flops
from sleep_jax.model import HybridLM
from sleep_jax.session import SleepSession
from sleep_jax.windowed import windowed_loss


# -- FLOP counting ----------------------------------------------------------------------------------
# jaxpr_matmul_flops (sleep_jax.cost) counts every scan body times its length.


def _xla_flops(compiled) -> float:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0]
  return float(ca.get("flops", float("nan"))) if ca else float("nan")


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


# -- (b) training step ------------------------------------------------------------------------------
def bench_train(passes, batch_size: int, repeats: int, gdn_impl: str) -> None:
  cfg = ModelConfig(vocab_size=8, d_model=256, n_layers=4, n_heads=4, head_dim=64, gdn_head_dim=64,
                    gdn_impl=gdn_impl)
  model = HybridLM(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  t, window = 100, 24
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (batch_size, t)).astype(np.int32)
  mask = np.zeros((batch_size, t), np.float32)
  mask[:, -4:] = 1.0
  batch = dict(tokens=jnp.asarray(tokens), targets=jnp.asarray(np.roll(tokens, -1, 1)), loss_mask=jnp.asarray(mask))
  schedule = (True, True, True, True, False)
  print(f"\n(b) training step, fwd+bwd of windowed_loss: B={batch_size} T={t} L={window} "
        f"layout={cfg.block_types} d={cfg.d_model} gdn_impl={gdn_impl} backend={jax.default_backend()}")
  compiled, info = {}, {}
  for n in passes:
    sleep = SleepConfig(window=window, n_passes=n)

    def loss(st, b, sleep=sleep):
      return windowed_loss(nnx.merge(graphdef, st), b, sleep, sleep_schedule=schedule)[0]

    step = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    compiled[n] = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    flops = jaxpr_matmul_flops(jax.make_jaxpr(jax.value_and_grad(loss))(state, batch))
    jax.block_until_ready(compiled[n](state, batch))
    info[n] = (flops, _xla_flops(compiled[n]), compile_s)
  # Round-robin over N so that changes in machine load hit every N alike.
  times = {n: [] for n in passes}
  for _ in range(repeats):
    for n in passes:
      times[n].append(_median_time(lambda n=n: compiled[n](state, batch), 1))
  rows = [(n, statistics.median(times[n]), *info[n]) for n in passes]
  base = rows[0]
  print(f"{'N':>3} {'step ms':>9} {'time x':>7} {'matmul GFLOP':>13} {'FLOP x':>7} {'time/FLOP':>9} "
        f"{'XLA GFLOP':>10} {'XLA x':>6} {'compile s':>9}")
  for n, sec, flops, xla, comp in rows:
    tr, fr = sec / base[1], flops / base[2]
    print(f"{n:>3} {sec * 1e3:>9.1f} {tr:>7.2f} {flops / 1e9:>13.3f} {fr:>7.2f} {tr / fr:>9.2f} "
          f"{xla / 1e9:>10.3f} {xla / base[3]:>6.2f} {comp:>9.1f}")
  print("target: time/FLOP within 1.15 of 1 for every N")


# -- (a) decode latency -----------------------------------------------------------------------------
def _full_attention_stepper(cfg: ModelConfig, ctx: int, n_tokens: int):
  """A jitted decode step of the full-attention model over a cache holding ``ctx`` tokens."""
  model = HybridLM(cfg, rngs=nnx.Rngs(1))
  graphdef, state = nnx.split(model)
  size = ctx + n_tokens
  rng = np.random.default_rng(ctx)
  caches = []
  for kv in model.init_kv_caches(1, size):
    k = jnp.asarray(rng.normal(size=kv.k.shape), kv.k.dtype)
    v = jnp.asarray(rng.normal(size=kv.v.shape), kv.v.dtype)
    pos = jnp.where(jnp.arange(size) < ctx, jnp.arange(size), -1).astype(jnp.int32)
    caches.append(type(kv)(k=k, v=v, pos=pos))
  box = {"caches": tuple(caches), "position": ctx}
  fw = model.init_fast_weights(1)
  convs = model.init_conv_histories(1)

  @jax.jit
  def step(st, token, position, caches):
    logits, _, caches, _ = nnx.merge(graphdef, st).decode_step(token, position, fw, caches, convs, window=None)
    return logits, caches

  token = jnp.zeros((1,), jnp.int32)

  def one():
    _, box["caches"] = step(state, token, jnp.int32(box["position"]), box["caches"])
    box["position"] += 1
    return box["caches"]

  jax.block_until_ready(step(state, token, jnp.int32(ctx), box["caches"]))  # compile
  return one


def _timed(fn) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def bench_decode(contexts, window: int, n_passes: int, n_tokens: int, gdn_impl: str) -> None:
  common = dict(vocab_size=256, d_model=256, n_layers=4, n_heads=4, head_dim=64, gdn_head_dim=64,
                gdn_impl=gdn_impl)
  sleep_cfg = ModelConfig(**common)
  full_cfg = ModelConfig(layout=("attn",) * 4, **common)
  sleep = SleepConfig(window=window, n_passes=n_passes)
  print(f"\n(a) per-token decode latency, B=1, d=256, 4 layers: sleep model {sleep_cfg.block_types} "
        f"(L={window}, N={n_passes}) vs full attention {full_cfg.block_types}; median of {n_tokens} tokens, "
        f"timed round-robin across contexts so load changes hit every context alike")
  rng = np.random.default_rng(0)
  session = SleepSession(HybridLM(sleep_cfg, rngs=nnx.Rngs(0)), sleep)
  session.fork().feed(rng.integers(0, 256, (1, window + 1)).astype(np.int32))  # compile window + decode paths
  forks, stream_s = {}, 0.0
  for ctx in contexts:
    if ctx % window:
      raise ValueError(f"context {ctx} must be a multiple of the window {window}")
    t0 = time.perf_counter()
    while session.position < ctx:  # whole windows: wake pass + sleep on each
      session.feed(rng.integers(0, 256, (1, window)).astype(np.int32))
    jax.block_until_ready(session.state.fast_weights)
    stream_s += time.perf_counter() - t0
    forks[ctx] = session.fork()  # the fork's timed tokens do not enter `session`
  full = {ctx: _full_attention_stepper(full_cfg, ctx, n_tokens) for ctx in contexts}
  sleep_t = {ctx: [] for ctx in contexts}
  full_t = {ctx: [] for ctx in contexts}
  for _ in range(n_tokens):
    for ctx in contexts:
      token = rng.integers(0, 256, (1, 1)).astype(np.int32)
      sleep_t[ctx].append(_timed(lambda: forks[ctx].feed(token)))
      full_t[ctx].append(_timed(full[ctx]))
  print(f"streamed {session.position} tokens through the sleep model in {stream_s:.1f} s "
        f"({session.position / max(stream_s, 1e-9):.0f} tokens/s, wake pass + sleep)")
  first = contexts[0]
  s0, f0 = statistics.median(sleep_t[first]), statistics.median(full_t[first])
  print(f"{'context':>8} {'sleep ms/token':>15} {'x vs ' + str(first):>10} {'full-attn ms/token':>19} "
        f"{'x vs ' + str(first):>10}")
  for ctx in contexts:
    s, f = statistics.median(sleep_t[ctx]), statistics.median(full_t[ctx])
    print(f"{ctx:>8} {s * 1e3:>15.2f} {s / s0:>10.2f} {f * 1e3:>19.2f} {f / f0:>10.2f}")
  last = contexts[-1]
  print(f"sleep model latency({last})/latency({first}) = {statistics.median(sleep_t[last]) / s0:.2f} "
        f"(target <= 1.1)")


# -- (c) streaming latency across window boundaries -------------------------------------------------
def bench_stream(window: int, n_passes: int, n_windows: int, gdn_impl: str, halt_tol: float | None = None) -> None:
  cfg = ModelConfig(vocab_size=256, d_model=256, n_layers=4, n_heads=4, head_dim=64, gdn_head_dim=64,
                    gdn_impl=gdn_impl)
  if halt_tol is None:
    sleep = SleepConfig(window=window, n_passes=n_passes)
    how = f"N={n_passes}"
  else:
    sleep = SleepConfig(window=window, halt_tol=halt_tol, max_passes=n_passes)
    how = f"adaptive halt_tol={halt_tol}, max N={n_passes}"
  session = SleepSession(HybridLM(cfg, rngs=nnx.Rngs(0)), sleep)
  rng = np.random.default_rng(0)
  warm = session.fork()
  for t in rng.integers(0, 256, window + 1):  # compile decode, sleep and window start
    jax.block_until_ready(warm.feed(np.int32(t)))
  jax.block_until_ready(warm.state)
  wake, sleeping = [], []
  t_all = time.perf_counter()
  for t in rng.integers(0, 256, n_windows * window):
    t0 = time.perf_counter()
    session.feed(np.int32(t))
    # The state, not only the logits: the token that fills a window pays for its sleep.
    jax.block_until_ready(session.state)
    dt = time.perf_counter() - t0
    (sleeping if session.position % window == 0 else wake).append(dt)
  total = time.perf_counter() - t_all
  stats = session.stats
  print(f"\n(c) streaming latency, B=1, d=256, 4 layers {cfg.block_types}, L={window}, {how}: "
        f"{stats.tokens} tokens one at a time, {stats.sleeps} window boundaries, backend={jax.default_backend()}")
  pct = lambda xs, q: float(np.percentile(np.asarray(xs) * 1e3, q))
  print(f"{'tokens':>16} {'count':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
  for name, xs in (("wake", wake), ("sleeping", sleeping), ("all", wake + sleeping)):
    print(f"{name:>16} {len(xs):>6} {pct(xs, 50):>9.2f} {pct(xs, 99):>9.2f} {pct(xs, 100):>9.2f}")
  print(f"amortised: {total / stats.tokens * 1e3:.2f} ms/token; sleeping token / wake p50 = "
        f"{pct(sleeping, 50) / pct(wake, 50):.1f}x")
  print(f"compute (analytic, SleepSession.stats): passes per sleep {stats.passes:.2f}; per token: wake "
        f"{stats.wake_flops_per_token / 1e6:.2f} MFLOP, sleep {stats.sleep_flops_per_token / 1e6:.2f} MFLOP "
        f"(sleep/wake {stats.sleep_flops / stats.wake_flops:.2f}); achieved "
        f"{(stats.wake_flops + stats.sleep_flops) / total / 1e9:.2f} GFLOP/s")


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m launch.bench model", description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small run: contexts 1k/8k, N in 1,2, batch 2")
  parser.add_argument("--skip-decode", action="store_true")
  parser.add_argument("--skip-train", action="store_true")
  parser.add_argument("--gdn-impl", default="auto", choices=["auto", "reference", "chunked", "pallas"])
  parser.add_argument("--window", type=int, default=1024, help="L of the sleep model in (a)")
  parser.add_argument("--skip-stream", action="store_true")
  parser.add_argument("--stream-window", type=int, default=128, help="L in (c)")
  parser.add_argument("--stream-windows", type=int, default=16, help="windows streamed in (c)")
  parser.add_argument("--stream-passes", type=int, default=4, help="N (or the adaptive cap) in (c)")
  parser.add_argument("--halt-tol", type=float, default=None, help="adaptive sleep in (c)")
  args = parser.parse_args(argv)
  if not args.skip_decode:
    contexts = (1024, 8192) if args.quick else (1024, 8192, 65536)
    bench_decode(contexts, args.window, 2, 8 if args.quick else 32, args.gdn_impl)
  if not args.skip_train:
    passes = (1, 2) if args.quick else (1, 2, 4)
    bench_train(passes, 2 if args.quick else 8, 3 if args.quick else 5, args.gdn_impl)
  if not args.skip_stream:
    bench_stream(64 if args.quick else args.stream_window, args.stream_passes, 6 if args.quick else args.stream_windows,
                 args.gdn_impl, args.halt_tol)
  return 0
