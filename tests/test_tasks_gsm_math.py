"""GSM-style math task: answers by an independent evaluation of the decoded program."""
import collections
import dataclasses
import functools
import hashlib

import numpy as np
import pytest

import tasks
from tasks import example as ex_lib
from tasks import gsm_math

TASK = tasks.get_task("gsm_math")


@functools.cache
def examples(preset: str, split: str, n: int, **overrides):
  config = dataclasses.replace(TASK.preset(preset), **overrides)
  return config, [TASK.make_example(config, 0, i, split) for i in range(n)]


def parse(words: list[str]):
  """Decoded text -> (question variable, {var: rhs words}, listed vars, answer word)."""
  start = next(i for i, w in enumerate(words) if w != "<pad>")
  assert set(words[:start]) <= {"<pad>"}
  body = words[start:]
  assert body[0] == "Q" and body[2] == ";"  # the question precedes the context
  assert body[-2] == "A"
  lines = " ".join(body[3:-2]).split(" ;")
  assert lines[-1] == ""
  program, listed = {}, []
  for line in lines[:-1]:
    lhs, rhs = line.strip().split(" = ")
    assert lhs not in program  # every variable is assigned once
    program[lhs] = rhs.split()
    listed.append(lhs)
  return body[1], program, listed, body[-1]


def evaluate_fixpoint(program: dict[str, list[str]], modulus: int) -> dict[str, int]:
  """Sweeps the lines in listed order until nothing changes (no topological sort)."""
  ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
  values, changed = {}, True
  while changed:
    changed = False
    for var, rhs in program.items():
      if var in values:
        continue
      if len(rhs) == 1:
        values[var] = int(rhs[0]) % modulus
        changed = True
      elif rhs[0] in values and rhs[2] in values:
        values[var] = ops[rhs[1]](values[rhs[0]], values[rhs[2]]) % modulus
        changed = True
  assert len(values) == len(program), "the program has a cycle or an undefined variable"
  return values


def count_ops(program, var, seen=None) -> int:
  """Operation lines among ``var`` and its ancestors."""
  seen = set() if seen is None else seen
  if var in seen:
    return 0
  seen.add(var)
  rhs = program[var]
  if len(rhs) == 1:
    return 0
  return 1 + count_ops(program, rhs[0], seen) + count_ops(program, rhs[2], seen)


def check_example(config, ex, tok):
  t = config.seq_len
  words = tok.decode(ex["tokens"]).split() + [tok.decode(ex["targets"][-1:])]
  question, program, listed, answer = parse(words)
  values = evaluate_fixpoint(program, config.modulus)
  op = count_ops(program, question)
  assert int(answer) == values[question]
  np.testing.assert_array_equal(np.nonzero(ex["loss_mask"])[0], [t - 1])
  assert ex["depth"][t - 1] == op == ex["meta"]["op"] and ex["answer_id"][t - 1] == 0
  assert ex["meta"]["answer"] == values[question] and f"V{ex['meta']['query']}" == question
  np.testing.assert_array_equal(ex["targets"][:-1], ex["tokens"][1:])
  n_input = int((ex["tokens"] != 0).sum())
  assert config.min_len - 3 <= n_input <= config.seq_len
  # The whole question (Q <var> ;) is evicted before the answer is predicted.
  assert t - n_input + gsm_math.QUESTION_TOKENS - 1 < config.last_visible_position
  return op, program, listed


@pytest.mark.parametrize("preset,n", [("small", 2000), ("paper", 60)])
def test_answers_match_independent_evaluation(preset, n):
  config, exs = examples(preset, "train", n)
  tok = TASK.tokenizer(config)
  ops = [check_example(config, ex, tok)[0] for ex in exs]
  assert set(ops) == set(range(1, 9)) if n >= 1000 else set(ops) <= set(range(1, 9))


def test_random_order_uses_forward_references_topological_does_not():
  for order, expect_forward in (("random", True), ("topological", False)):
    config, exs = examples("small", "train", 200, line_order=order)
    tok = TASK.tokenizer(config)
    forward = 0
    for ex in exs:
      _, program, listed = check_example(config, ex, tok)
      pos = {v: i for i, v in enumerate(listed)}
      for var, rhs in program.items():
        if len(rhs) == 3:
          forward += pos[rhs[0]] > pos[var] or pos[rhs[2]] > pos[var]
    assert (forward > 0) == expect_forward


def test_train_eval_disjoint():
  _, train = examples("small", "train", 2000)
  _, evals = examples("small", "eval", 2000)
  assert not {ex["tokens"].tobytes() for ex in train} & {ex["tokens"].tobytes() for ex in evals}


def test_answers_not_degenerate():
  config, exs = examples("small", "train", 2000)
  answers = np.bincount([ex["meta"]["answer"] for ex in exs], minlength=config.modulus)
  # Chance is 1/23; zeros are somewhat more common (a zero factor propagates).
  assert answers.max() < 0.12 * len(exs) and answers.min() > 0


def test_paper_presets():
  for name, window, eviction in (("paper", 2000, "hard"), ("paper_sliding", 512, "sliding")):
    config = TASK.preset(name)
    assert TASK.window(config) == window and TASK.eviction(config) == eviction
    assert TASK.seq_len(config) == 3300 and config.min_len == 2000
    assert (config.op_min, config.op_max) == (1, 8)


def test_queried_variable_is_evicted_at_the_tightest_accepted_config():
  # Hard eviction, windows of 64 over T = 255: the answer sees positions >= 192.
  # With odd min_len the shortest examples reach the latest question position.
  tight = dict(op_max=1, seq_len=255, window=64, n_vars=80)
  with pytest.raises(ValueError, match="attention cache"):
    gsm_math.GsmMathConfig(min_len=67, **tight)  # Q at 191, its variable at 192
  config = gsm_math.GsmMathConfig(min_len=69, **tight)
  assert config.latest_question_position + gsm_math.QUESTION_TOKENS - 1 == config.last_visible_position - 1
  latest = 0
  for i in range(4000):
    latest = max(latest, int(np.nonzero(TASK.make_example(config, 0, i)["tokens"] == gsm_math._Q)[0][0]))
  assert latest == config.latest_question_position  # the bound is reached, and the variable is evicted


def test_single_operator_restriction():
  config, exs = examples("small", "train", 50, operators=("+",))
  tok = TASK.tokenizer(config)
  for ex in exs:
    _, program, _ = check_example(config, ex, tok)
    assert {rhs[1] for rhs in program.values() if len(rhs) == 3} <= {"+"}


@pytest.mark.parametrize("kwargs,match", [
    (dict(op_max=9), "op_max"),                                    # op beyond what is supported
    (dict(op_min=0), "op_min"),
    (dict(modulus=21), "prime"),
    (dict(n_vars=500), "n_vars"),                                  # more variables than the pool
    (dict(min_len=60, seq_len=60), "min_len"),                     # core does not fit
    (dict(min_len=3400), "seq_len"),
    (dict(window=4000), "attention cache"),                        # question never evicted
    (dict(window=1800, eviction="sliding"), "attention cache"),
    (dict(eviction="soft"), "eviction"),
    (dict(operators=("/",)), "operators"),
    (dict(line_order="sorted"), "line_order"),
    (dict(p_new_leaf=1.5), "p_new_leaf"),
])
def test_bad_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gsm_math.GsmMathConfig(**kwargs)


def test_deterministic_and_index_sensitive():
  config = TASK.preset("small")
  a, b = TASK.make_example(config, 4, 9), TASK.make_example(config, 4, 9)
  for key in ex_lib.ARRAY_KEYS:
    np.testing.assert_array_equal(a[key], b[key])
  assert a["meta"] == b["meta"]
  assert not np.array_equal(a["tokens"], TASK.make_example(config, 4, 10)["tokens"])


# -- n_queries ----------------------------------------------------------------------------------------
# Digests of the examples the task made before it had n_queries (recorded from that code): the default
# n_queries = 1 must reproduce them bit for bit, arrays and ground truth alike.
OLD_META_KEYS = ("op", "query", "answer", "modulus", "program", "core_vars")
OLD_DIGESTS = [
    ("small", {}, 0, 40, "42631a3ba44d91d1ac6e764dd9020eba"),
    ("small", {}, 7, 40, "dc4e0d08696e48138cca5151209e68ad"),
    ("small", {"line_order": "topological"}, 3, 20, "45c0b88809ecc7bb1e58f32054b80080"),
    ("small", {"operators": ("+",), "op_min": 3, "op_max": 5, "p_new_leaf": 0.2}, 5, 20,
     "295da69bfde605f06f5726db3cc4c844"),
    ("paper", {}, 1, 3, "f000056e06cfcc884a67b9fe9226001b"),
    ("paper_sliding", {}, 2, 3, "505cc4a1553e254ba54b39b6003e771e"),
]
# The non-pad input tokens of ("small", seed 0, index 0, "train") from that code; its answer is 14 (id 22).
OLD_SMALL_0 = [
    1, 82, 4, 60, 3, 69, 5, 47, 4, 47, 3, 86, 5, 64, 4, 84, 3, 47, 5, 83, 4, 48, 3, 100, 7, 97, 4, 86, 3, 66, 7, 80,
    4, 44, 3, 66, 7, 107, 4, 73, 3, 12, 4, 88, 3, 80, 5, 44, 4, 109, 3, 107, 5, 97, 4, 68, 3, 16, 4, 59, 3, 80, 5,
    107, 4, 42, 3, 69, 5, 95, 4, 62, 3, 29, 4, 95, 3, 14, 4, 96, 3, 86, 6, 95, 4, 36, 3, 69, 6, 82, 4, 82, 3, 64, 5,
    44, 4, 64, 3, 24, 4, 53, 3, 82, 5, 84, 4, 69, 3, 80, 5, 44, 4, 97, 3, 9, 4, 45, 3, 95, 6, 84, 4, 38, 3, 82, 7,
    76, 4, 107, 3, 10, 4, 100, 3, 76, 6, 96, 4, 43, 3, 109, 7, 59, 4, 56, 3, 62, 7, 48, 4, 65, 3, 45, 7, 44, 4, 58,
    3, 96, 7, 95, 4, 83, 3, 47, 5, 82, 4, 80, 3, 82, 5, 66, 4, 75, 3, 86, 5, 59, 4, 52, 3, 18, 4, 54, 3, 84, 5, 75,
    4, 81, 3, 109, 7, 83, 4, 66, 3, 76, 7, 97, 4, 76, 3, 30, 4, 2]


@pytest.mark.parametrize("preset,overrides,seed,n,digest", OLD_DIGESTS)
def test_one_query_reproduces_the_examples_from_before_n_queries(preset, overrides, seed, n, digest):
  config = dataclasses.replace(TASK.preset(preset), **overrides)
  assert config.n_queries == 1
  h = hashlib.sha256()
  for split in ("train", "eval"):
    for i in range(n):
      ex = TASK.make_example(config, seed, i, split)
      for key in ex_lib.ARRAY_KEYS:
        h.update(ex[key].tobytes())
      h.update(repr({k: ex["meta"][k] for k in OLD_META_KEYS}).encode())
      meta = ex["meta"]
      assert meta["queries"] == [(meta["query"], meta["op"], meta["answer"])]
  assert h.hexdigest()[:32] == digest


def test_one_query_keeps_the_vocabulary_and_an_old_example():
  config = TASK.preset("small")
  assert TASK.vocab_size(config) == 111 and "Q2" not in TASK.tokenizer(config).vocab
  ex = TASK.make_example(config, 0, 0)
  assert ex["tokens"][ex["tokens"] != 0].tolist() == OLD_SMALL_0 and ex["targets"][-1] == 22


def resolve(program, modulus: int) -> dict[int, int]:
  """Every variable's value in Z_p, each resolved recursively from ``meta["program"]``."""
  rhs = dict(program)
  assert len(rhs) == len(program)  # every variable assigned once
  ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
  values = {}

  def value(var, stack=()):
    assert var not in stack, "cycle"
    if var not in values:
      r = rhs[var]
      values[var] = (r[1] if r[0] == "const" else
                     ops[r[0]](value(r[1], stack + (var,)), value(r[2], stack + (var,)))) % modulus
    return values[var]

  for var in rhs:
    value(var)
  return values


def ancestors(program, var) -> set[int]:
  """``var`` and every variable it reads, directly or not."""
  rhs, seen, todo = dict(program), set(), [var]
  while todo:
    v = todo.pop()
    if v not in seen:
      seen.add(v)
      todo += [] if rhs[v][0] == "const" else [rhs[v][1], rhs[v][2]]
  return seen


def multi_config(m: int, **overrides):
  # Small preset with room for m cores: 2 cores of op_max = 8 need 177 tokens, 4 of op_max = 4 need 195.
  base = dict(n_queries=m, min_len=180) if m == 2 else dict(n_queries=m, op_max=4, min_len=200)
  return dataclasses.replace(TASK.preset("small"), **{**base, **overrides})


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("line_order", ["random", "topological"])
def test_several_queries_answer_disjoint_cores(m, line_order):
  config = multi_config(m, line_order=line_order)
  tok = TASK.tokenizer(config)
  t = config.seq_len
  assert tok.vocab_size == 111 + 2 * (m - 1) == TASK.vocab_size(config)
  assert tok.vocab[-2 * (m - 1):] == tuple(f"Q{j}" for j in range(2, m + 1)) + tuple(f"A{j}" for j in range(2, m + 1))
  q_words = ["Q"] + [f"Q{j}" for j in range(2, m + 1)]
  a_words = ["A"] + [f"A{j}" for j in range(2, m + 1)]
  answer_pos = [t - 1 - 2 * (m - 1 - j) for j in range(m)]
  for split in ("train", "eval"):
    for i in range(100):
      ex = TASK.make_example(config, 1, i, split)
      meta, tokens = ex["meta"], ex["tokens"]
      assert "answer" not in meta and len(meta["queries"]) == m
      values = resolve(meta["program"], config.modulus)
      qvars = [v for v, _, _ in meta["queries"]]
      assert len(set(qvars)) == m
      cores = [ancestors(meta["program"], v) for v in qvars]
      assert sum(map(len, cores)) == len(set().union(*cores)) and sorted(set().union(*cores)) == meta["core_vars"]
      rhs = dict(meta["program"])
      for (var, op, answer), core in zip(meta["queries"], cores):
        assert values[var] == answer and config.op_min <= op <= config.op_max
        assert sum(rhs[v][0] != "const" for v in core) == op  # op operation lines on the query's path
      # Layout: the question block first (and evicted), the answers last, in the final window.
      words = tok.decode(tokens).split()
      q = int(np.nonzero(tokens)[0][0])
      assert words[q:q + 3 * m] == [w for j in range(m) for w in (q_words[j], f"V{qvars[j]}", ";")]
      assert q + config.question_block_len - 1 < config.last_visible_position
      assert min(answer_pos) >= ex_lib.window_starts(t, config.window)[-1]
      stream = words + [tok.decode(ex["targets"][-1:])]
      assert stream[t - 2 * m + 1:] == [w for j in range(m) for w in (a_words[j], str(meta["queries"][j][2]))]
      listed = " ".join(stream[q + 3 * m:t - 2 * m + 1]).split(" ;")
      assert listed[-1] == "" and len(listed) - 1 == len(meta["program"])
      np.testing.assert_array_equal(np.nonzero(ex["loss_mask"])[0], answer_pos)
      assert ex["targets"][answer_pos].tolist() == [tok.id(str(a)) for _, _, a in meta["queries"]]
      assert ex["depth"][answer_pos].tolist() == [op for _, op, _ in meta["queries"]]
      assert ex["answer_id"][answer_pos].tolist() == list(range(m))
      np.testing.assert_array_equal(ex["targets"][:-1], tokens[1:])
      assert tok.encode(tok.decode(tokens)) == tokens.tolist()
      assert tokens.max() < tok.vocab_size and ex["targets"].max() < tok.vocab_size
      assert config.min_len - 3 <= int((tokens != 0).sum()) <= t


def test_query_ops_are_uniform_and_independent():
  config = multi_config(2, op_min=2, op_max=7)
  k = config.op_max - config.op_min + 1
  ops = np.array([[op for _, op, _ in TASK.make_example(config, 5, i)["meta"]["queries"]] for i in range(1000)])
  freq = np.bincount(ops.ravel() - config.op_min, minlength=k) / ops.size
  assert ops.min() == config.op_min and ops.max() == config.op_max
  se = np.sqrt((1 / k) * (1 - 1 / k) / ops.size)
  assert np.all(np.abs(freq - 1 / k) < 4 * se), freq
  # Independence of the two queries' ops: the contingency table's chi-square (dof (k-1)^2 = 25; mean 25,
  # sd ~7) far from extreme.
  joint = np.zeros((k, k))
  np.add.at(joint, (ops[:, 0] - config.op_min, ops[:, 1] - config.op_min), 1)
  expected = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True) / joint.sum()
  dof = (k - 1) ** 2
  assert ((joint - expected) ** 2 / expected).sum() < dof + 6 * np.sqrt(2 * dof)


@pytest.mark.parametrize("n_queries", [0, 9, 1.5, True, "2", None])
def test_bad_n_queries(n_queries):
  with pytest.raises(ValueError, match="n_queries"):
    gsm_math.GsmMathConfig(n_queries=n_queries)


def test_several_queries_need_room_eviction_and_the_last_window():
  small = dict(seq_len=256, window=64, n_vars=80)
  gsm_math.GsmMathConfig(min_len=160, **small)
  with pytest.raises(ValueError, match=r"min_len \(160\) must hold the n_queries = 2 .* at least 177"):
    gsm_math.GsmMathConfig(n_queries=2, min_len=160, **small)
  gsm_math.GsmMathConfig(n_queries=2, min_len=177, **small)
  # The whole question block is evicted: at min_len 69 one question ends at 191 (the answer sees >= 192),
  # two would end at 194.
  tight = dict(op_max=1, seq_len=255, window=64, n_vars=80)
  gsm_math.GsmMathConfig(min_len=69, **tight)
  with pytest.raises(ValueError, match=r"questions can occupy positions 189\.\.194, .*n_queries 2"):
    gsm_math.GsmMathConfig(n_queries=2, min_len=69, **tight)
  config = gsm_math.GsmMathConfig(n_queries=2, min_len=72, **tight)
  assert config.latest_question_position + config.question_block_len - 1 == config.last_visible_position - 1
  # Every answer in the last window: T = 257 with L = 64 leaves one position (256) in it.
  edge = dict(op_max=2, min_len=100, seq_len=257, window=64, n_vars=80)
  gsm_math.GsmMathConfig(**edge)
  with pytest.raises(ValueError, match=r"n_queries = 2 answers take positions 254\.\.256, .* last window"):
    gsm_math.GsmMathConfig(n_queries=2, **edge)


@pytest.mark.parametrize("line_order", gsm_math.LINE_ORDERS)
def test_line_values_are_hidden_targets_of_the_lines_computable_when_read(line_order):
  plain = dataclasses.replace(TASK.preset("small"), line_order=line_order, op_max=3)
  config = dataclasses.replace(plain, line_values=True)
  tok = TASK.tokenizer(config)
  assert TASK.tokenizer(plain).vocab == tok.vocab
  n_targets = n_op_lines = 0
  for i in range(40):
    ex, ref = TASK.make_example(config, 0, i), TASK.make_example(plain, 0, i)
    for key in ("tokens", "depth", "answer_id"):  # the same example; only targets and the mask gain entries
      np.testing.assert_array_equal(ex[key], ref[key])
    meta = ex["meta"]
    values = resolve(meta["program"], config.modulus)
    aux = (ex["loss_mask"] > 0) & (ex["depth"] < 0)
    scored = (ex["loss_mask"] > 0) & (ex["depth"] >= 0)
    np.testing.assert_array_equal(scored, ref["loss_mask"] > 0)
    np.testing.assert_array_equal(ex["targets"][scored], ref["targets"][scored])
    # Decode the listed lines from the tokens and find which are computable when their ";" is read.
    words = [tok.vocab[t] for t in ex["tokens"]]
    want, defined = {}, set()
    start = words.index("Q") + 3
    pos = start
    for var, rhs in meta["program"]:
      width = gsm_math.CONST_TOKENS if rhs[0] == "const" else gsm_math.OP_TOKENS
      assert words[pos] == f"V{var}" and words[pos + width - 1] == ";"
      if rhs[0] != "const":
        n_op_lines += 1
        if rhs[1] in defined and rhs[2] in defined:
          want[pos + width - 1] = (var, values[var])
      defined.add(var)
      pos += width
    assert sorted(want) == np.nonzero(aux)[0].tolist()
    assert [(p, v, x) for p, v, x in meta["line_targets"]] == [(p, *want[p]) for p in sorted(want)]
    for p, (var, value) in want.items():
      assert ex["targets"][p] == tok.id(str(value)) and ex["tokens"][p] == gsm_math._SEMI
      assert ex["answer_id"][p] == -1
    n_targets += len(want)
  if line_order == "topological":
    assert n_targets == n_op_lines  # every operation line is computable where it is read
  else:
    assert 0 < n_targets < n_op_lines


def test_line_values_leave_the_schedule_to_the_scored_answer():
  from sleep_jax.windowed import schedule_from_mask
  config = dataclasses.replace(TASK.preset("small"), line_values=True, line_order="topological")
  exs = [TASK.make_example(config, 0, i) for i in range(16)]
  mask, depth = (np.stack([e[k] for e in exs]) for k in ("loss_mask", "depth"))
  assert schedule_from_mask(mask, config.window, depth) == (True, True, True, False)
  # Counted as answers, the targets would keep the middle windows awake (the first is mostly padding).
  assert schedule_from_mask(mask, config.window)[1:] == (False, False, False)


def test_line_values_must_be_a_bool():
  with pytest.raises(ValueError, match="line_values must be a bool"):
    dataclasses.replace(TASK.preset("small"), line_values=1)


def test_distractors_reading_constants_read_only_earlier_constants():
  config = dataclasses.replace(TASK.preset("small"), op_max=3, distractor_reads="constants")
  uses = collections.Counter()
  for i in range(200):
    meta = TASK.make_example(config, 0, i)["meta"]
    rhs = dict(meta["program"])
    values = resolve(meta["program"], config.modulus)  # acyclic, every variable defined
    assert meta["answer"] == values[meta["query"]]
    core = set(meta["core_vars"])
    for var, r in meta["program"]:
      if r[0] != "const" and var not in core:
        assert rhs[r[1]][0] == "const" and rhs[r[2]][0] == "const"
        uses.update(("core" if v in core else "distractor") for v in (r[1], r[2]))
  assert uses["core"] > 50 and uses["distractor"] > 50  # both kinds of constants are read


def test_bad_distractor_reads():
  with pytest.raises(ValueError, match="distractor_reads must be one of"):
    dataclasses.replace(TASK.preset("small"), distractor_reads="ops")
