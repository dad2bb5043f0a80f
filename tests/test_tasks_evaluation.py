"""Evaluator against a brute-force per-example computation."""
import collections
import math

import numpy as np
import pytest

import tasks
from tasks.evaluation import Evaluator


def stacked(task_name: str, n: int, split: str = "eval"):
  task = tasks.get_task(task_name)
  config = task.preset("small")
  exs = [task.make_example(config, 0, i, split) for i in range(n)]
  return task, config, {k: np.stack([e[k] for e in exs]) for k in ("tokens", "targets", "loss_mask", "depth",
                                                                    "answer_id")}


def noisy_predictions(batch, vocab, p_wrong, rng):
  preds = batch["targets"].copy()
  flip = rng.random(preds.shape) < p_wrong
  preds[flip] = (preds[flip] + rng.integers(1, vocab, size=flip.sum())) % vocab
  loss = np.where(batch["loss_mask"] > 0, rng.exponential(size=preds.shape), 0.0)
  return preds, loss


def brute_force(batch, preds, loss, headline, per_answer_id, chance=None):
  """Metrics by explicit loops over examples, answers and positions."""
  unit = collections.defaultdict(list)
  unit_answers = collections.defaultdict(list)  # depth -> the units' answers (token tuples)
  losses = collections.defaultdict(list)
  slots = collections.defaultdict(list)
  answers, examples = [], []
  for b in range(preds.shape[0]):
    per_answer = collections.defaultdict(list)
    answer_tokens = collections.defaultdict(list)
    depth_of = {}
    for t in range(preds.shape[1]):
      if batch["loss_mask"][b, t] > 0:
        a, d = int(batch["answer_id"][b, t]), int(batch["depth"][b, t])
        per_answer[a].append(preds[b, t] == batch["targets"][b, t])
        answer_tokens[a].append(int(batch["targets"][b, t]))
        depth_of[a] = max(depth_of.get(a, d), d)
        losses[d].append(loss[b, t])
    if not per_answer:
      continue
    rights = {a: all(v) for a, v in per_answer.items()}
    for a, r in rights.items():
      answers.append(r)
      slots[a].append(r)
      if headline == "answer":
        unit[depth_of[a]].append(r)
        unit_answers[depth_of[a]].append(tuple(answer_tokens[a]))
    examples.append(all(rights.values()))
    if headline == "example":
      unit[max(depth_of.values())].append(all(rights.values()))
      unit_answers[max(depth_of.values())].append(tuple(sorted((a, tuple(v)) for a, v in answer_tokens.items())))
  every_answer = [x for v in unit_answers.values() for x in v]
  out_majority = {f"majority/depth={d}": collections.Counter(v).most_common(1)[0][1] / len(v)
                  for d, v in unit_answers.items()}
  out_majority["majority"] = collections.Counter(every_answer).most_common(1)[0][1] / len(every_answer)
  out_majority.update({f"count/depth={d}": len(v) for d, v in unit.items()})
  if chance is not None:
    out_majority.update({f"chance/depth={d}": chance(d) for d in unit})
    out_majority["chance"] = np.mean([chance(d) for d, v in unit.items() for _ in v])
  out = {"answer_accuracy": np.mean(answers), "example_accuracy": np.mean(examples),
         "accuracy": np.mean(examples if headline == "example" else answers),
         "loss": np.mean([x for v in losses.values() for x in v])}
  out.update({f"accuracy/depth={d}": np.mean(v) for d, v in unit.items()})
  out.update({f"loss/depth={d}": np.mean(v) for d, v in losses.items()})
  if per_answer_id:
    out.update({f"accuracy/answer_id={a}": np.mean(v) for a, v in slots.items()})
  out.update(out_majority)
  return out


@pytest.mark.parametrize("task_name", ["rule110", "depo", "gsm_math"])
def test_matches_brute_force(task_name):
  task, config, batch = stacked(task_name, 96)
  rng = np.random.default_rng(0)
  preds, loss = noisy_predictions(batch, task.vocab_size(config), 0.15, rng)
  ev = task.evaluator(config)
  # Two updates accumulate like one.
  half = {k: v[:40] for k, v in batch.items()}
  rest = {k: v[40:] for k, v in batch.items()}
  ev.update(half, preds[:40], loss[:40])
  ev.update(rest, preds[40:], loss[40:])
  got = ev.result()
  want = brute_force(batch, preds, loss, ev.headline, ev.per_answer_id, ev.chance)
  for key, value in want.items():
    assert math.isclose(got[key], value, rel_tol=1e-12), (key, got[key], value)
  sliced = ("accuracy/depth=", "loss/depth=", "accuracy/answer_id=", "majority/depth=", "chance/depth=",
            "count/depth=")
  assert {k for k in got if k.startswith(sliced)} == {k for k in want if k.startswith(sliced)}
  assert 0.0 < got["accuracy"] < 1.0
  assert got["n_examples"] == 96


def test_baselines_hand_computed():
  # Three examples, two answers each: answer 0 (depth 1) one token, answer 1
  # (depth 2) two tokens in rows 0 and 1, one token in row 2.
  targets = np.array([[0, 5, 6, 7], [0, 5, 6, 8], [9, 0, 0, 6]])
  batch = {"targets": targets,
           "loss_mask": np.array([[0, 1, 1, 1], [0, 1, 1, 1], [1, 0, 0, 1]], np.float32),
           "depth": np.array([[-1, 1, 2, 2], [-1, 1, 2, 2], [1, -1, -1, 2]]),
           "answer_id": np.array([[-1, 0, 1, 1], [-1, 0, 1, 1], [0, -1, -1, 1]])}
  loss = np.zeros(targets.shape)
  ev = Evaluator("answer", chance=lambda d: 0.1 * d)
  ev.update(batch, targets, loss)
  res = ev.result()
  # Depth 1 answers (5,), (5,), (9,); depth 2 answers (6, 7), (6, 8), (6,):
  # whole answers count, so the shared first token 6 is no majority.
  assert res["count/depth=1"] == 3 and res["count/depth=2"] == 3 and res["count"] == 6
  assert res["majority/depth=1"] == 2 / 3 and res["majority/depth=2"] == 1 / 3
  assert res["majority"] == 2 / 6  # (5,) is the most frequent answer of the split
  assert res["chance/depth=1"] == 0.1 and res["chance/depth=2"] == 0.2
  assert math.isclose(res["chance"], (3 * 0.1 + 3 * 0.2) / 6)
  # Example headline: each example sits at depth 2; the three answer tuples differ.
  ex_ev = Evaluator("example", chance=lambda d: 0.25)
  ex_ev.update(batch, targets, loss)
  res = ex_ev.result()
  assert res["count/depth=2"] == 3 and res["majority/depth=2"] == 1 / 3 and res["chance"] == 0.25
  assert "count/depth=1" not in res
  # Rows 0 and 1 made identical: two of three examples share their whole answer.
  batch["targets"] = np.array([[0, 5, 6, 7], [0, 5, 6, 7], [9, 0, 0, 6]])
  ex_ev.reset()
  ex_ev.update(batch, targets, loss)
  assert ex_ev.result()["majority/depth=2"] == 2 / 3
  assert "chance" not in Evaluator("answer").result()
  with pytest.raises(ValueError, match="chance"):
    Evaluator("answer", chance=0.5)


@pytest.mark.parametrize("task_name", ["rule110", "depo", "gsm_math"])
def test_majority_is_one_on_a_constant_answer_bucket(task_name):
  task, config, batch = stacked(task_name, 64)
  # Every answer token of the smallest depth becomes token 1; other buckets keep theirs.
  d0 = int(batch["depth"][batch["loss_mask"] > 0].min())
  batch["targets"] = np.where((batch["loss_mask"] > 0) & (batch["depth"] == d0), 1, batch["targets"])
  ev = task.evaluator(config)
  ev.update(batch, batch["targets"], np.zeros(batch["targets"].shape))
  res = ev.result()
  buckets = sorted(int(k.split("=")[1]) for k in res if k.startswith("majority/depth="))
  assert len(buckets) > 1 and buckets[0] == d0
  # For Rule 110 (example headline) the bucket holds examples whose depth is d0.
  assert res[f"majority/depth={d0}"] == 1.0
  assert all(res[f"majority/depth={d}"] < 1.0 for d in buckets[1:])
  assert res["majority"] < 1.0 and 0.0 < res["chance"] < 1.0


def test_task_chance_definitions():
  r110, depo_cfg, gsm = (tasks.get_task(n).preset("paper") for n in ("rule110", "depo", "gsm_math"))
  assert tasks.get_task("rule110").evaluator(r110).chance(32) == 2.0 ** -4
  assert tasks.get_task("gsm_math").evaluator(gsm).chance(3) == 1 / 23
  # Depo: 1 / (n - 1) averaged over p(n) on [17, 75].
  ns = np.arange(17, 76)
  p = 1 / (ns + np.sqrt(75))
  want = float(np.sum(p / p.sum() / (ns - 1)))
  assert math.isclose(tasks.get_task("depo").evaluator(depo_cfg).chance(4), want, rel_tol=1e-12)
  assert 1 / 74 < want < 1 / 16


def test_headline_units():
  assert tasks.get_task("rule110").evaluator(None).headline == "example"
  assert tasks.get_task("depo").evaluator(None).headline == "answer"
  assert tasks.get_task("gsm_math").evaluator(None).headline == "answer"


def test_perfect_and_wrong_predictions():
  _, _, batch = stacked("depo", 8)
  ev = Evaluator("answer")
  ev.update(batch, batch["targets"], np.zeros(batch["targets"].shape))
  res = ev.result()
  assert res["accuracy"] == res["example_accuracy"] == res["token_accuracy"] == 1.0 and res["loss"] == 0.0
  ev.reset()
  ev.update(batch, batch["targets"] + 1, np.ones(batch["targets"].shape))
  res = ev.result()
  assert res["accuracy"] == 0.0 and res["loss"] == 1.0
  assert all(v == 0.0 for k, v in res.items() if k.startswith("accuracy/depth="))


def test_predictions_off_the_mask_are_ignored():
  _, _, batch = stacked("rule110", 8)
  preds = np.where(batch["loss_mask"] > 0, batch["targets"], 0)
  ev = Evaluator("example")
  ev.update(batch, preds, np.zeros(preds.shape))
  assert ev.result()["accuracy"] == 1.0


def test_multi_token_answer_needs_every_token():
  targets = np.array([[5, 6, 7, 8]])
  batch = {"targets": targets, "loss_mask": np.array([[0, 1, 1, 1]], np.float32),
           "depth": np.array([[-1, 3, 3, 2]]), "answer_id": np.array([[-1, 0, 0, 1]])}
  ev = Evaluator("answer")
  ev.update(batch, np.array([[0, 6, 0, 8]]), np.array([[0.0, 1.0, 2.0, 3.0]]))
  res = ev.result()
  assert res["answer_accuracy"] == 0.5 and res["example_accuracy"] == 0.0
  assert res["accuracy/depth=3"] == 0.0 and res["accuracy/depth=2"] == 1.0
  assert res["loss/depth=3"] == 1.5 and res["loss/depth=2"] == 3.0


def test_bad_inputs():
  _, _, batch = stacked("rule110", 2)
  ev = Evaluator("example")
  with pytest.raises(ValueError, match="predictions"):
    ev.update(batch, batch["targets"][:, :-1], np.zeros(batch["targets"].shape))
  with pytest.raises(ValueError, match="answer_id"):
    ev.update({k: v for k, v in batch.items() if k != "answer_id"}, batch["targets"], batch["loss_mask"])
  with pytest.raises(ValueError, match="headline"):
    Evaluator("token")
  assert math.isnan(Evaluator().result()["accuracy"])


def test_auxiliary_targets_are_reported_apart_and_never_scored():
  task, config, batch = stacked("depo", 16)
  rng = np.random.default_rng(0)
  preds, loss = noisy_predictions(batch, task.vocab_size(config), 0.3, rng)
  plain = Evaluator("answer")
  plain.update(batch, preds, loss)
  # Auxiliary targets on unmasked positions: half predicted right, with a huge loss.
  aux_batch = {k: v.copy() for k, v in batch.items()}
  free = np.argwhere(batch["loss_mask"] == 0)[::7][:40]
  aux_preds, aux_loss = preds.copy(), loss.copy()
  for n, (b, t) in enumerate(free):
    aux_batch["loss_mask"][b, t] = 1.0
    aux_batch["targets"][b, t] = 5
    aux_preds[b, t] = 5 if n % 2 == 0 else 6
    aux_loss[b, t] = 1e3
  with_aux = Evaluator("answer")
  with_aux.update(aux_batch, aux_preds, aux_loss)
  got, want = with_aux.result(), plain.result()
  assert got.pop("aux_count") == len(free) and got.pop("aux_accuracy") == pytest.approx(0.5, abs=1 / len(free))
  assert "aux_accuracy" not in want
  assert set(got) == set(want)
  for key in want:  # accuracies, counts, baselines and losses: the scored positions' alone
    assert got[key] == pytest.approx(want[key], nan_ok=True), key
