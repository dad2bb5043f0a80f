"""Property tests: bad input raises a ValueError naming it, good input gives well-formed output.

Covers the task configurations and their examples, the tokenizer, the gated
delta rule (reference against chunked) and ``SleepSession.feed``. Every property
runs under the loaded hypothesis profile ("fast": few examples, see
``tests/conftest.py``) and again, marked slow, under the "slow" profile.
"""
import dataclasses
import math
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import event, given, settings
from hypothesis import strategies as st

import tasks
from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.model import HybridLM
from sleep_jax.ops import gated_delta_rule
from sleep_jax.session import SleepSession
from sleep_jax.testing import assert_close
from tasks import depo, gsm_math, rule110
from tasks import example as ex_lib
from tasks.tokenizer import PAD, Tokenizer

SLOW = settings.get_profile("slow")
TASK_NAMES = ("rule110", "depo", "gsm_math")


def names(message: str, *args: str) -> bool:
  """Whether ``message`` names one of ``args`` as a word."""
  return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(a)}(?![A-Za-z0-9_])", message) for a in args)


# -- task configurations ------------------------------------------------------------------------------
STRING_CHOICES = {"n_sampling": depo.N_SAMPLINGS, "query_sources": depo.QUERY_SOURCES, "eviction": gsm_math.EVICTIONS,
                  "line_order": gsm_math.LINE_ORDERS,
                  "distractor_reads": gsm_math.DISTRACTOR_READS}
WRONG_TYPES = st.sampled_from([None, "3", 2.5, True, float("nan"), (1,)])


def field_values(name: str, base):
  """Values for one config field: mostly plausible, sometimes out of range or of the wrong type."""
  if name in STRING_CHOICES:
    return st.one_of(st.sampled_from(STRING_CHOICES[name] + ("bogus", "")), WRONG_TYPES)
  if isinstance(base, bool):
    return st.one_of(st.booleans(), st.booleans().map(np.bool_), WRONG_TYPES)
  if isinstance(base, int):
    # Around the small preset's value (kept small so examples stay cheap), the
    # edges 0 and negatives, numpy integers, and wrong types.
    near = st.one_of(st.integers(max(base - 3, -2), base + 3),
                     st.integers(-2, max(2 * base, 8)) if base < 1 << 20 else st.integers(-2, 1 << 31))
    return st.one_of(near, near, near.map(np.int64), WRONG_TYPES)
  if isinstance(base, float):
    return st.one_of(st.floats(-0.5, 1.5), st.sampled_from([math.nan, math.inf]), WRONG_TYPES)
  if name == "eval_ks":
    return st.one_of(st.lists(st.integers(-1, 12), max_size=5).map(tuple), st.just("1,2"), WRONG_TYPES)
  if name == "k_weights":
    weight = st.one_of(st.floats(-1.0, 3.0), st.sampled_from([math.nan, math.inf, 0.0]))
    return st.one_of(st.none(), st.lists(weight, max_size=10).map(tuple), st.just("1,2"), WRONG_TYPES)
  if name == "operators":
    return st.one_of(st.lists(st.sampled_from(["+", "-", "*", "/"]), max_size=4).map(tuple), st.just("+"),
                     WRONG_TYPES)
  raise AssertionError(f"no strategy for field {name} = {base!r}")


@st.composite
def config_overrides(draw, task_name: str):
  base = tasks.get_task(task_name).preset("small")
  fields = [f.name for f in dataclasses.fields(base)]
  chosen = draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True))
  return {name: draw(field_values(name, getattr(base, name))) for name in chosen}


def check_example(task, config, ex, split):
  """Layout invariants every task's examples share, plus each task's own ground truth."""
  t, window = task.seq_len(config), task.window(config)
  vocab = task.vocab_size(config)
  assert set(ex) == set(ex_lib.ARRAY_KEYS) | {"meta"}
  for key, dtype in (("tokens", np.int32), ("targets", np.int32), ("loss_mask", np.float32),
                     ("depth", np.int32), ("answer_id", np.int32)):
    assert ex[key].shape == (t,) and ex[key].dtype == dtype, key
  assert ex["tokens"].min() >= 0 and ex["tokens"].max() < vocab
  assert ex["targets"].min() >= 0 and ex["targets"].max() < vocab
  trained = ex["loss_mask"] > 0
  mask = trained & (ex["depth"] >= 0)  # scored answers; the rest are auxiliary targets (math line values, Depo edges)
  aux = trained & ~mask
  if getattr(config, "line_values", False):
    assert aux.sum() == len(ex["meta"]["line_targets"])
    assert np.all(ex["tokens"][aux] == gsm_math._SEMI) and np.all(ex["answer_id"][aux] == -1)
  elif getattr(config, "edge_targets", 0):
    assert aux.sum() == ex["meta"]["n"] == len(ex["meta"]["edge_targets"])
    assert np.all(ex["tokens"][aux] == depo._COMMA) and np.all(ex["answer_id"][aux] == -1)
  else:
    assert not aux.any()
  shifted = ex["tokens"][1:].copy()
  shifted[aux[:-1]] = ex["targets"][:-1][aux[:-1]]
  if not getattr(config, "answers_visible", True):  # Depo's hidden answers: <pad> in the input after "="
    hidden = np.nonzero(mask[:-1])[0]
    assert np.all(shifted[hidden] == 0)
    shifted[hidden] = ex["targets"][hidden]
  np.testing.assert_array_equal(ex["targets"][:-1], shifted)
  assert set(np.unique(ex["loss_mask"]).tolist()) <= {0.0, 1.0} and mask.any()
  assert np.all(ex["depth"][~mask] == -1)
  assert np.all(ex["answer_id"][mask] >= 0) and np.all(ex["answer_id"][~mask] == -1)
  # Every answer is predicted in the last (never slept on) window.
  assert np.nonzero(mask)[0].min() >= ex_lib.window_starts(t, window)[-1]
  assert ex_lib.split_of_tokens(ex["tokens"]) == split
  meta = ex["meta"]
  if isinstance(config, depo.DepoConfig):
    sources = [s for s, _, _ in meta["queries"]]
    assert len(set(sources)) == (1 if config.query_sources == "shared" else len(sources))
    assert all(1 <= k < meta["n"] for _, k, _ in meta["queries"])
    cycle = meta["cycle"].tolist()
    assert all(cycle[(cycle.index(s) + k) % meta["n"]] == d for s, k, d in meta["queries"])
  elif isinstance(config, rule110.Rule110Config):
    np.testing.assert_array_equal(rule110.rule110_steps(meta["states"], meta["t"])[:, 0], meta["labels"])
  else:
    m, tok = config.n_queries, task.tokenizer(config)
    assert len(meta["queries"]) == m and len({v for v, _, _ in meta["queries"]}) == m
    assert m > 1 or meta["queries"] == [(meta["query"], meta["op"], meta["answer"])]
    # The answer prompts end the input, two tokens apart; each one's target is its query's answer.
    answer_pos = [t - 1 - 2 * (m - 1 - j) for j in range(m)]
    np.testing.assert_array_equal(np.nonzero(mask)[0], answer_pos)
    assert ex["targets"][answer_pos].tolist() == [tok.id(str(a)) for _, _, a in meta["queries"]]
    assert ex["depth"][answer_pos].tolist() == [op for _, op, _ in meta["queries"]]
    q = int(np.nonzero(ex["tokens"] == gsm_math._Q)[0][0])
    # The whole question block (Q <v1> ; ... Qm <vm> ;) is evicted.
    assert q + gsm_math.QUESTION_TOKENS * m - 1 < config.last_visible_position


def config_property(task_name, overrides):
  task = tasks.get_task(task_name)
  kwargs = {**dataclasses.asdict(task.preset("small")), **overrides}
  try:
    config = task.config_cls(**kwargs)
  except ValueError as err:
    assert names(str(err), *overrides), (overrides, str(err))
    event("config refused")
    return
  event("config constructed")
  for split in ("train", "eval"):
    for index in (0, 1):
      try:
        ex = task.make_example(config, 3, index, split)
      except ValueError as err:  # documented: a configuration too small to split
        assert "too few distinct sequences" in str(err), (overrides, str(err))
        continue
      check_example(task, config, ex, split)


@pytest.mark.parametrize("task_name", TASK_NAMES)
@given(data=st.data())
def test_task_config_constructs_or_names_the_field(task_name, data):
  config_property(task_name, data.draw(config_overrides(task_name), label="overrides"))


@pytest.mark.slow
@pytest.mark.parametrize("task_name", TASK_NAMES)
@settings(SLOW)
@given(data=st.data())
def test_task_config_constructs_or_names_the_field_slow(task_name, data):
  config_property(task_name, data.draw(config_overrides(task_name), label="overrides"))


# -- tokenizer ----------------------------------------------------------------------------------------
WORDS = st.text(min_size=1, max_size=5).filter(lambda w: not any(c.isspace() for c in w) and w != PAD)
VOCABS = st.lists(WORDS, max_size=12, unique=True).map(lambda ws: [PAD] + ws)
SPACES = st.text(alphabet=" \t\n\r\x0b\x0c\x1c\x85\u2003\u3000", min_size=1, max_size=3)


def tokenizer_property(data):
  vocab = data.draw(VOCABS, label="vocab")
  tok = Tokenizer(vocab)
  ids = data.draw(st.lists(st.integers(0, len(vocab) - 1), max_size=12), label="ids")
  text = tok.decode(ids)
  assert tok.encode(text) == ids and text == " ".join(vocab[i] for i in ids)
  assert tok.decode(np.asarray(ids, np.int64)) == text
  assert tok.decode(ids, skip_pad=True) == " ".join(vocab[i] for i in ids if i != 0)
  # Any whitespace between words, before or after them, encodes the same.
  seps = data.draw(st.lists(SPACES, min_size=len(ids) + 1, max_size=len(ids) + 1), label="separators")
  spaced = seps[0] + "".join(vocab[i] + s for i, s in zip(ids, seps[1:]))
  assert tok.encode(spaced) == ids
  # Bad input: ids outside the vocabulary, non-integer ids, unknown words, non-strings.
  bad_id = data.draw(st.one_of(st.integers(-2 ** 63, -1), st.integers(len(vocab), 2 ** 63 - 1)), label="bad id")
  with pytest.raises(ValueError, match="outside"):
    tok.decode(ids + [bad_id])
  with pytest.raises(ValueError, match="ids"):  # beyond int64: an object array, refused as not integer
    tok.decode(ids + [2 ** 64 + abs(bad_id)])
  with pytest.raises(ValueError, match="ids"):
    tok.decode(np.asarray(ids + [0], np.float32))
  with pytest.raises(ValueError, match="ids"):
    tok.decode(np.zeros((2, 2), np.int32))
  unknown = data.draw(WORDS.filter(lambda w: w not in vocab), label="unknown word")
  with pytest.raises(ValueError, match="not in the vocabulary"):
    tok.encode(text + " " + unknown)
  with pytest.raises(ValueError, match="text"):
    tok.encode(ids)
  # A vocabulary is accepted exactly when it follows the rules.
  raw = data.draw(st.lists(st.one_of(st.text(max_size=3), st.just(PAD), st.none()), max_size=5), label="raw vocab")
  ok = (bool(raw) and raw[0] == PAD and len(set(raw)) == len(raw)
        and all(isinstance(w, str) and w and not any(c.isspace() for c in w) for w in raw))
  if ok:
    assert Tokenizer(raw).vocab == tuple(raw)
  else:
    with pytest.raises(ValueError, match="vocab"):
      Tokenizer(raw)


@given(data=st.data())
def test_tokenizer_round_trips_and_refuses_bad_input(data):
  tokenizer_property(data)


@pytest.mark.slow
@settings(SLOW)
@given(data=st.data())
def test_tokenizer_round_trips_and_refuses_bad_input_slow(data):
  tokenizer_property(data)


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_task_tokenizers_round_trip_every_id(task_name):
  task = tasks.get_task(task_name)
  for preset in task.presets.values():
    tok = task.tokenizer(preset)
    ids = list(range(tok.vocab_size))
    assert tok.encode(tok.decode(ids)) == ids


# -- gated delta rule ---------------------------------------------------------------------------------
# A small grid of shapes (each distinct shape compiles both implementations).
GDR_DIMS = st.tuples(st.sampled_from([1, 2]), st.sampled_from([1, 3, 8]), st.sampled_from([1, 2]),
                     st.sampled_from([1, 3, 4]), st.sampled_from([1, 5]))
LOG_ALPHA_SCALES = st.sampled_from([0.0, 1e-3, 0.5, 5.0, 100.0])  # 0: gate exactly 1; 100: beyond exp's range


@st.composite
def gdr_inputs(draw):
  b, t, h, dk, dv = draw(GDR_DIMS, label="B, T, H, Dk, Dv")
  dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16]), label="dtype")
  rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1), label="seed"))
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # callers normalise q and k
  q = unit(rng.normal(size=(b, t, h, dk)))
  k = unit(rng.normal(size=(b, t, h, dk)))
  v = rng.normal(size=(b, t, h, dv))
  log_alpha = -draw(LOG_ALPHA_SCALES, label="decay") * rng.random((b, t, h))
  beta = rng.random((b, t, h))
  cast = lambda x: jnp.asarray(x, dtype)
  args = dict(q=cast(q), k=cast(k), v=cast(v), log_alpha=cast(log_alpha), beta=cast(beta))
  kwargs = {}
  if draw(st.booleans(), label="initial_state"):
    kwargs["initial_state"] = jnp.asarray(rng.normal(size=(b, h, dk, dv)), jnp.float32)
  kwargs["scale"] = draw(st.sampled_from([None, 0.5]), label="scale")
  kwargs["chunk_size"] = draw(st.sampled_from([1, 2, 64]), label="chunk_size")
  return args, kwargs


def gdr_valid_property(inputs):
  args, kwargs = inputs
  b, t, h, _ = args["q"].shape
  dk, dv = args["q"].shape[-1], args["v"].shape[-1]
  ref = gated_delta_rule(**args, **kwargs, impl="reference")
  chunked = gated_delta_rule(**args, **kwargs, impl="chunked")
  for o, s in (ref, chunked):
    assert o.shape == (b, t, h, dv) and o.dtype == args["v"].dtype
    assert s.shape == (b, h, dk, dv) and s.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(o, np.float32))) and np.all(np.isfinite(np.asarray(s)))
  # bfloat16 outputs are rounded once at the end by both: compare in the bfloat16 row.
  assert_close(ref, chunked, "float32" if args["v"].dtype == jnp.float32 else "bfloat16",
               what="chunked vs reference")


@given(inputs=gdr_inputs())
def test_gated_delta_rule_valid_inputs_agree(inputs):
  gdr_valid_property(inputs)


@pytest.mark.slow
@settings(SLOW)
@given(inputs=gdr_inputs())
def test_gated_delta_rule_valid_inputs_agree_slow(inputs):
  gdr_valid_property(inputs)


# Argument -> the axes whose size change is reported against that argument. A
# change of q's size is reported by the arguments compared with q, and one of v's
# Dv by initial_state, so those are left to the "empty" mutations.
SIZED = {"q": (), "k": (0, 1, 2, 3), "v": (0, 1, 2), "log_alpha": (0, 1, 2), "beta": (0, 1, 2),
         "initial_state": (0, 1, 2, 3)}


@st.composite
def gdr_bad_inputs(draw):
  """Valid float32 inputs with one argument broken; returns (args, kwargs, name)."""
  b, t, h, dk, dv = draw(st.tuples(st.sampled_from([1, 2]), st.sampled_from([1, 3]), st.just(2), st.just(3),
                                   st.just(2)), label="dims")
  z = lambda *s: jnp.zeros(s, jnp.float32)
  args = dict(q=z(b, t, h, dk), k=z(b, t, h, dk), v=z(b, t, h, dv), log_alpha=z(b, t, h) - 0.1,
              beta=z(b, t, h) + 0.5)
  kwargs = dict(initial_state=z(b, h, dk, dv))
  kind = draw(st.sampled_from(["rank", "size", "empty", "dtype", "list", "values", "scale", "chunk_size",
                               "impl"]), label="kind")
  if kind in ("scale", "chunk_size", "impl"):
    bad = {"scale": [math.nan, math.inf, "1", True, np.ones(2)], "chunk_size": [0, -1, 1.5, True, "64"],
           "impl": ["bogus", None, 3, "CHUNKED"]}[kind]
    kwargs[kind] = draw(st.sampled_from(bad), label="value")
    return args, kwargs, kind
  if kind == "values":
    la = np.array(args["log_alpha"])
    la.flat[draw(st.integers(0, la.size - 1))] = draw(st.sampled_from([1e-3, 2.0, math.nan, math.inf]))
    args["log_alpha"] = jnp.asarray(la)
    return args, kwargs, "log_alpha"
  pool = {"size": [n for n, axes in SIZED.items() if axes], "empty": list(SIZED)}.get(kind, list(SIZED))
  name = draw(st.sampled_from(pool), label="argument")
  where = args if name in args else kwargs
  x = where[name]
  if kind == "rank":
    where[name] = x[..., None] if draw(st.booleans()) else x[0]
  elif kind == "size":
    axis = draw(st.sampled_from(SIZED[name]), label="axis")
    new = draw(st.sampled_from([1, 4]).filter(lambda n: n != x.shape[axis]), label="size")
    where[name] = jnp.zeros(x.shape[:axis] + (new,) + x.shape[axis + 1:], x.dtype)
  elif kind == "empty":  # any axis of any argument (v's Dv included) emptied
    axis = draw(st.sampled_from(range(x.ndim)), label="axis")
    where[name] = jnp.zeros(x.shape[:axis] + (0,) + x.shape[axis + 1:], x.dtype)
  elif kind == "dtype":
    where[name] = x.astype(draw(st.sampled_from([jnp.int32, jnp.bool_]), label="dtype"))
  else:  # a nested Python list instead of an array
    where[name] = np.asarray(x).tolist()
  return args, kwargs, name


def gdr_bad_property(bad, impl):
  args, kwargs, name = bad
  with pytest.raises(ValueError) as err:
    gated_delta_rule(**args, **{"impl": impl, **kwargs})
  assert names(str(err.value), name), (name, str(err.value))


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@given(bad=gdr_bad_inputs())
def test_gated_delta_rule_bad_inputs_name_the_argument(bad, impl):
  gdr_bad_property(bad, impl)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["reference", "chunked"])
@settings(SLOW)
@given(bad=gdr_bad_inputs())
def test_gated_delta_rule_bad_inputs_name_the_argument_slow(bad, impl):
  gdr_bad_property(bad, impl)


# -- SleepSession.feed --------------------------------------------------------------------------------
VOCAB = 7
_MODEL = []


def session_model():
  if not _MODEL:
    cfg = ModelConfig(vocab_size=VOCAB, d_model=16, layout=("attn", "gdn"), n_heads=2, head_dim=8, gdn_head_dim=8)
    _MODEL.append(HybridLM(cfg, rngs=nnx.Rngs(0)))
  return _MODEL[0]


SLEEP = SleepConfig(window=3, n_passes=2)
INT_DTYPES = [np.int8, np.int32, np.int64, np.uint8, np.uint32]


@st.composite
def feed_inputs(draw):
  """``(batch_size, tokens)``: tokens of a random rank, shape, dtype and range."""
  b = draw(st.sampled_from([1, 2]), label="batch_size")
  ndim = draw(st.sampled_from([0, 1, 2, 2, 2, 3]), label="ndim")
  shape = tuple(draw(st.lists(st.integers(0, 3), min_size=ndim, max_size=ndim), label="shape"))
  if ndim == 2 and draw(st.booleans()):
    shape = (b,) + shape[1:]  # often the right number of rows
  dtype = draw(st.sampled_from(INT_DTYPES + [np.float32, np.bool_]), label="dtype")
  hi = VOCAB if draw(st.booleans()) else VOCAB + 3
  lo = 0 if draw(st.booleans()) or np.issubdtype(dtype, np.unsignedinteger) else -3
  values = np.random.default_rng(draw(st.integers(0, 2 ** 16))).integers(lo, hi, size=shape)
  tokens = values.astype(dtype)
  form = draw(st.sampled_from(["array", "list", "jax"]), label="container")
  if form == "list":
    tokens = tokens.tolist()
  elif form == "jax" and dtype not in (np.uint32,):
    tokens = jnp.asarray(tokens)
  return b, tokens


def feed_property(inputs):
  b, tokens = inputs
  arr = np.asarray(tokens)
  canonical = arr.reshape(1, -1) if (b == 1 and arr.ndim <= 1) else arr
  ok_shape = canonical.ndim == 2 and canonical.shape[0] == b
  ok_dtype = np.issubdtype(arr.dtype, np.integer)
  ok_values = arr.size == 0 or (ok_dtype and arr.min() >= 0 and arr.max() < VOCAB)
  session = SleepSession(session_model(), SLEEP, batch_size=b)
  session.feed(np.ones((b, 1), np.int32))  # a stream already under way
  before = session.state
  if not (ok_shape and ok_dtype and ok_values):
    with pytest.raises(ValueError, match="tokens must") as err:
      session.feed(tokens)
    if not ok_shape:
      assert f"[B, n] = [{b}, n]" in str(err.value)
    assert session.state is before and session.position == 1  # nothing consumed
    return
  n = canonical.shape[1]
  out = session.feed(tokens)
  assert out.shape == (b, n, VOCAB) and out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))
  assert session.position == 1 + n
  # Whatever form the tokens came in, they mean the [B, n] int32 array.
  other = SleepSession(session_model(), SLEEP, batch_size=b)
  other.feed(np.ones((b, 1), np.int32))
  np.testing.assert_array_equal(np.asarray(other.feed(canonical.astype(np.int32))), np.asarray(out))


@given(inputs=feed_inputs())
def test_session_feed_accepts_b_by_n_and_refuses_the_rest(inputs):
  feed_property(inputs)


@pytest.mark.slow
@settings(SLOW)
@given(inputs=feed_inputs())
def test_session_feed_accepts_b_by_n_and_refuses_the_rest_slow(inputs):
  feed_property(inputs)
