"""GSM-style math task: answers by an independent evaluation of the decoded program."""
import dataclasses
import functools

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
