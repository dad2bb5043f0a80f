r"""Importing Hugging Face Gated DeltaNet hybrids: :func:`load_pretrained`.

``load_pretrained(path)`` reads a Hugging Face model directory (``config.json``
and ``*.safetensors``, one file or shards listed by
``model.safetensors.index.json``) with the ``safetensors`` numpy API (no torch)
and returns a :class:`~sleep_jax.model.HybridLM` computing the same logits.
Supported: transformers' Qwen3-Next family (``model_type: qwen3_next``) with
dense MLPs. The model's extra features are ``ModelConfig`` block options, all
off by default:

=============================  =====================================================================
Qwen3-Next feature             ``ModelConfig`` field
=============================  =====================================================================
gated attention                ``attn_output_gate=True``: ``o * sigmoid(g)`` per head and channel
q / k norms (over head_dim)    ``attn_qk_norm=True``
partial rotary                 ``rope_fraction = partial_rotary_factor`` (rope_dim = int(hd * f))
grouped-query heads            ``n_kv_heads = num_key_value_heads``
zero-centred RMSNorm           ``norm_zero_centered=True``: gain ``1 + weight``
grouped GDN value heads        ``gdn_n_key_heads = linear_num_key_heads``, ``gdn_n_heads = linear_num_value_heads``
gated output norm (GDN)        the existing ``GatedRMSNorm`` (plain gain ``weight``, not zero-centred)
short convolution              the existing depthwise causal conv on ``[q, k, v]`` with SiLU
``A_log`` / ``dt_bias`` gate   the existing ``log alpha = -exp(A_log) softplus(a + dt_bias)``
tied embeddings                ``tie_embeddings = tie_word_embeddings``
=============================  =====================================================================

Config fields (``config.json``) read: ``model_type``, ``vocab_size``,
``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
``layer_types`` (or ``full_attention_interval``), ``num_attention_heads``,
``num_key_value_heads``, ``head_dim``, ``rope_parameters`` (or top-level
``rope_theta`` / ``partial_rotary_factor``), ``rms_norm_eps``,
``linear_num_key_heads``, ``linear_num_value_heads``, ``linear_key_head_dim``,
``linear_value_head_dim``, ``linear_conv_kernel_dim``,
``tie_word_embeddings``; checked and refused when unsupported:
``num_experts`` / ``mlp_only_layers`` / ``decoder_sparse_step`` (a
mixture-of-experts layer), ``attention_bias``, ``hidden_act`` (SiLU only),
``rope_parameters.rope_type`` (``default`` only), unknown ``layer_types``.

Parameter mapping (Hugging Face name -> ``HybridLM`` parameter; a torch
``Linear`` weight ``[out, in]`` becomes the NNX kernel ``[in, out]``, its
transpose). ``i`` is the layer, ``H`` / ``Hkv`` the attention query / key-value
heads, ``hd`` their dimension, ``Hk`` / ``Hv`` the GDN key / value heads,
``dk`` / ``dv`` their dimensions, ``r = Hv / Hk``, ``K`` the conv width::

  model.embed_tokens.weight [V, D]              -> embed.embedding [V, D]
  model.norm.weight [D]                         -> final_norm.scale
  lm_head.weight [V, D] (untied only)           -> lm_head.kernel [D, V]
  model.layers.i.input_layernorm.weight         -> blocks[i].mixer_norm.scale
  model.layers.i.post_attention_layernorm.weight-> blocks[i].mlp_norm.scale
  model.layers.i.mlp.{gate,up,down}_proj.weight -> blocks[i].mlp.{gate,up,down}.kernel
  -- full_attention layers (blocks[i].mixer is Attention) --
  self_attn.q_proj.weight [H * 2 hd, D]         -> viewed [H, 2 hd, D]: rows [:hd] of each head -> q_proj.kernel,
                                                   rows [hd:] -> g_proj.kernel (the output gate)
  self_attn.{k,v}_proj.weight [Hkv hd, D]       -> {k,v}_proj.kernel
  self_attn.o_proj.weight [D, H hd]             -> o_proj.kernel
  self_attn.{q,k}_norm.weight [hd]              -> {q,k}_norm.scale
  -- linear_attention layers (blocks[i].mixer is GatedDeltaNet) --
  linear_attn.in_proj_qkvz.weight               -> viewed [Hk, 2 dk + 2 r dv, D], split per key head into
    [2 Hk dk + 2 Hv dv, D]                         q [dk] | k [dk] | v [r dv] | z [r dv]: q -> q_proj, k -> k_proj,
                                                   v -> v_proj and z -> g_proj (the output-norm gate); value head
                                                   j of key group g is value head g r + j
  linear_attn.in_proj_ba.weight [2 Hv, D]       -> viewed [Hk, 2 r, D]: b [:r] -> b_proj, a [r:] -> a_proj
  linear_attn.conv1d.weight [C, 1, K]           -> conv_weight [K, C] (channels q | k | v, as concatenated)
  linear_attn.A_log [Hv], dt_bias [Hv]          -> A_log, dt_bias
  linear_attn.norm.weight [dv]                  -> o_norm.scale
  linear_attn.out_proj.weight [D, Hv dv]        -> o_proj.kernel

Layout assumptions about the reference (transformers 5.x ``modeling_qwen3_next``):

* RMSNorms other than the GDN output norm compute ``x / rms(x) * (1 +
  weight)`` in float32; the GDN output norm ``weight * x / rms(x) *
  silu(z)``; all with ``rms_norm_eps``.
* Attention: queries and keys are normed per head before RoPE; RoPE is the
  half-split ("NeoX") rotation of the first ``int(head_dim *
  partial_rotary_factor)`` dimensions with ``inv_freq = theta ** (-2i /
  rope_dim)``; query head ``h`` reads key/value head ``h // (H / Hkv)``;
  scores scale by ``head_dim ** -0.5``.
* Gated DeltaNet: ``[q, k, v]`` pass one depthwise causal conv (no bias)
  and SiLU; ``q`` and ``k`` are L2-normalised (eps ``1e-6`` inside the
  root) and ``q`` scaled by ``dk ** -0.5``; value head ``j`` reads key head
  ``j // r``; ``beta = sigmoid(b)``, ``g = -exp(A_log) softplus(a +
  dt_bias)``; the state is ``[B, Hv, dk, dv]`` with ``o = S^T q``.
* ``mtp.*`` tensors (multi-token prediction heads of released checkpoints)
  are not part of the causal LM and are skipped; any other unexpected tensor is
  refused.

A checkpoint in bfloat16 loads as float32 parameters (the library's
parameters are float32; ``dtype=`` sets the compute dtype).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from sleep_jax.config import ModelConfig

SUPPORTED_MODEL_TYPES = ("qwen3_next",)
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_LAYER_KINDS = {"linear_attention": "gdn", "full_attention": "attn"}
_IGNORED_PREFIXES = ("mtp.",)
# ModelConfig fields a caller may set on top of the checkpoint's: they do not change any parameter's shape.
OVERRIDABLE = ("dtype", "gdn_impl", "gdn_chunk_size", "prelude", "coda")


class PretrainedError(ValueError):
  """A checkpoint that cannot be imported; the message is one line naming the file or field."""


def _fail(msg: str):
  raise PretrainedError(msg)


def read_hf_config(path: str) -> dict:
  """``path/config.json`` as a dict.

  Raises:
    PretrainedError: no directory, no ``config.json``, or invalid JSON.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    _fail(f"{path}: no such directory (expected a Hugging Face model directory with config.json)")
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    _fail(f"{path}: no config.json (expected a Hugging Face model directory)")
  try:
    with open(cfg_path) as f:
      cfg = json.load(f)
  except (OSError, ValueError) as e:
    _fail(f"{cfg_path}: not valid JSON ({e})")
  if not isinstance(cfg, dict):
    _fail(f"{cfg_path}: expected a JSON object")
  return cfg


def _get(hf: dict, name: str, default: Any = KeyError):
  if name in hf and hf[name] is not None:
    return hf[name]
  if default is KeyError:
    _fail(f"config.json has no {name!r} (needed for model_type {hf.get('model_type')!r})")
  return default


def layer_kinds(hf: dict) -> tuple[str, ...]:
  """The block layout (``"attn"`` / ``"gdn"``) of a Qwen3-Next config.

  Raises:
    PretrainedError: an unknown layer type, or a layout of the wrong length.
  """
  n = int(_get(hf, "num_hidden_layers"))
  types = hf.get("layer_types")
  if types is None:  # older configs: every full_attention_interval-th layer is attention
    interval = int(hf.get("full_attention_interval", 4))
    types = ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(n)]
  if len(types) != n:
    _fail(f"config.json layer_types has {len(types)} entries, num_hidden_layers is {n}")
  for i, t in enumerate(types):
    if t not in _LAYER_KINDS:
      _fail(f"config.json layer_types[{i}] = {t!r} is not supported (known: {sorted(_LAYER_KINDS)})")
  return tuple(_LAYER_KINDS[t] for t in types)


def _check_dense(hf: dict, n: int) -> None:
  n_experts = int(hf.get("num_experts") or 0)
  if n_experts <= 0:
    return
  dense = set(int(i) for i in (hf.get("mlp_only_layers") or ()))
  step = int(hf.get("decoder_sparse_step") or 1)
  moe = [i for i in range(n) if i not in dense and (i + 1) % step == 0]
  if moe:
    _fail(f"config.json num_experts={n_experts}: layer(s) {moe[:8]}{'...' if len(moe) > 8 else ''} are "
          "mixture-of-experts layers (not in mlp_only_layers); only dense MLPs are supported")


def model_config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """The ``ModelConfig`` of a Hugging Face ``config.json`` dict.

  Args:
    hf: the parsed ``config.json``.
    **overrides: ``ModelConfig`` fields that do not change parameter shapes
      (:data:`OVERRIDABLE`: compute ``dtype``, ``gdn_impl``,
      ``gdn_chunk_size``, ``prelude``, ``coda``).

  Raises:
    PretrainedError: one line naming the unsupported or missing field.
  """
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    _fail(f"config.json model_type={model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
  bad = sorted(set(overrides) - set(OVERRIDABLE))
  if bad:
    _fail(f"load_pretrained: {bad} cannot be overridden (they come from config.json); allowed: {OVERRIDABLE}")
  layout = layer_kinds(hf)
  _check_dense(hf, len(layout))
  if hf.get("attention_bias"):
    _fail("config.json attention_bias=true is not supported (attention projections without bias only)")
  if _get(hf, "hidden_act", "silu") != "silu":
    _fail(f"config.json hidden_act={hf['hidden_act']!r} is not supported (silu only)")
  rope = dict(hf.get("rope_parameters") or {})
  if hf.get("rope_scaling"):
    rope.update(hf["rope_scaling"])
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    _fail(f"config.json rope_parameters.rope_type={rope_type!r} is not supported (default RoPE only)")
  theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
  # transformers' Qwen3NextConfig defaults partial_rotary_factor to 0.25 when a config omits it.
  fraction = float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.25)))
  d = int(_get(hf, "hidden_size"))
  n_heads = int(_get(hf, "num_attention_heads"))
  head_dim = int(hf.get("head_dim") or d // n_heads)
  n_kv = int(_get(hf, "num_key_value_heads", n_heads))
  if n_heads % n_kv:
    _fail(f"config.json num_key_value_heads={n_kv} does not divide num_attention_heads={n_heads}")
  hk, hv = int(_get(hf, "linear_num_key_heads")), int(_get(hf, "linear_num_value_heads"))
  if hv % hk:
    _fail(f"config.json linear_num_value_heads={hv} is not a multiple of linear_num_key_heads={hk}")
  fields = dict(
      vocab_size=int(_get(hf, "vocab_size")), d_model=d, n_layers=len(layout), layout=layout,
      n_heads=n_heads, head_dim=head_dim, n_kv_heads=n_kv, attn_output_gate=True, attn_qk_norm=True,
      rope_fraction=fraction, rope_theta=theta, norm_zero_centered=True,
      norm_eps=float(_get(hf, "rms_norm_eps", 1e-6)),
      gdn_n_heads=hv, gdn_n_key_heads=hk, gdn_head_dim=int(_get(hf, "linear_key_head_dim")),
      gdn_value_dim=int(_get(hf, "linear_value_head_dim")), conv_size=int(_get(hf, "linear_conv_kernel_dim", 4)),
      mlp_hidden=int(_get(hf, "intermediate_size")), tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
  fields.update(overrides)
  try:
    return ModelConfig(**fields)
  except ValueError as e:
    _fail(f"config.json does not give a valid model: {e}")


# -- safetensors -------------------------------------------------------------------------------------
def safetensors_files(path: str) -> list[str]:
  """The checkpoint files of a model directory: the index's shards, ``model.safetensors``, or every
  ``*.safetensors``.

  Raises:
    PretrainedError: no safetensors file, an unreadable index, or a shard it names that is missing.
  """
  index = os.path.join(path, INDEX_FILE)
  if os.path.exists(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      _fail(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})")
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
    if missing:
      _fail(f"{index} names shard(s) that are missing: {missing[:4]}")
    return [os.path.join(path, f) for f in files]
  if os.path.exists(os.path.join(path, SINGLE_FILE)):
    return [os.path.join(path, SINGLE_FILE)]
  files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    _fail(f"{path}: no *.safetensors files (only safetensors checkpoints are supported, not .bin / .pt)")
  return [os.path.join(path, f) for f in files]


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a model directory's safetensors checkpoint, as numpy arrays (read fully, checked).

  Raises:
    PretrainedError: a file that is not a valid safetensors file (bad header, truncated data), or a
      tensor name found in two files.
  """
  from safetensors import SafetensorError, safe_open

  out: dict[str, np.ndarray] = {}
  for file in safetensors_files(path):
    try:
      with safe_open(file, framework="numpy") as f:
        for name in f.keys():
          if name in out:
            _fail(f"{file}: tensor {name!r} also appears in another shard")
          out[name] = f.get_tensor(name)
    except SafetensorError as e:
      _fail(f"{file}: not a valid safetensors file ({e})")
    except OSError as e:
      _fail(f"{file}: cannot read ({e})")
  return out


# -- mapping -------------------------------------------------------------------------------------------
class _Tensors:
  """Named checkpoint tensors, taken once each and checked for shape; what is left over is reported."""

  def __init__(self, tensors: dict[str, np.ndarray]):
    self.tensors = dict(tensors)
    self.used: set[str] = set()

  def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in self.tensors:
      _fail(f"checkpoint has no tensor {name!r} (expected shape {list(shape)})")
    x = self.tensors[name]
    if tuple(x.shape) != tuple(shape):
      _fail(f"checkpoint tensor {name!r} has shape {list(x.shape)}, config.json implies {list(shape)}")
    self.used.add(name)
    return np.asarray(x, np.float32)

  def leftover(self) -> list[str]:
    return sorted(n for n in self.tensors if n not in self.used and not n.startswith(_IGNORED_PREFIXES))


def _attention_params(t: _Tensors, p: str, c: ModelConfig) -> dict:
  d, h, hkv, hd = c.d_model, c.n_heads, c.num_kv_heads, c.head_dim
  qg = t.take(p + "q_proj.weight", (h * 2 * hd, d)).reshape(h, 2, hd, d)
  return {
      "q_proj": {"kernel": qg[:, 0].reshape(h * hd, d).T},
      "g_proj": {"kernel": qg[:, 1].reshape(h * hd, d).T},
      "k_proj": {"kernel": t.take(p + "k_proj.weight", (hkv * hd, d)).T},
      "v_proj": {"kernel": t.take(p + "v_proj.weight", (hkv * hd, d)).T},
      "o_proj": {"kernel": t.take(p + "o_proj.weight", (d, h * hd)).T},
      "q_norm": {"scale": t.take(p + "q_norm.weight", (hd,))},
      "k_norm": {"scale": t.take(p + "k_norm.weight", (hd,))},
  }


def _gdn_params(t: _Tensors, p: str, c: ModelConfig) -> dict:
  d, hk, hv, dk, dv = c.d_model, c.num_gdn_key_heads, c.num_gdn_heads, c.gdn_head_dim, c.gdn_v_dim
  r = hv // hk
  qkvz = t.take(p + "in_proj_qkvz.weight", (2 * hk * dk + 2 * hv * dv, d)).reshape(hk, 2 * dk + 2 * r * dv, d)
  q, k, v, z = np.split(qkvz, [dk, 2 * dk, 2 * dk + r * dv], axis=1)
  ba = t.take(p + "in_proj_ba.weight", (2 * hv, d)).reshape(hk, 2 * r, d)
  b, a = ba[:, :r], ba[:, r:]
  channels = 2 * hk * dk + hv * dv
  conv = t.take(p + "conv1d.weight", (channels, 1, c.conv_size))
  return {
      "q_proj": {"kernel": q.reshape(hk * dk, d).T},
      "k_proj": {"kernel": k.reshape(hk * dk, d).T},
      "v_proj": {"kernel": v.reshape(hv * dv, d).T},
      "g_proj": {"kernel": z.reshape(hv * dv, d).T},
      "b_proj": {"kernel": b.reshape(hv, d).T},
      "a_proj": {"kernel": a.reshape(hv, d).T},
      "conv_weight": np.ascontiguousarray(conv[:, 0, :].T),
      "A_log": t.take(p + "A_log", (hv,)),
      "dt_bias": t.take(p + "dt_bias", (hv,)),
      "o_norm": {"scale": t.take(p + "norm.weight", (dv,))},
      "o_proj": {"kernel": t.take(p + "out_proj.weight", (d, hv * dv)).T},
  }


def params_from_hf(tensors: dict[str, np.ndarray], config: ModelConfig) -> dict:
  """The ``HybridLM`` parameters (a pure nested dict of float32 arrays) from checkpoint tensors.

  Raises:
    PretrainedError: a missing tensor, a tensor of the wrong shape, an unexpected tensor, or tied
      embeddings with an ``lm_head.weight`` that differs from the embedding.
  """
  t = _Tensors(tensors)
  c = config
  v, d = c.vocab_size, c.d_model
  params: dict[str, Any] = {"embed": {"embedding": t.take("model.embed_tokens.weight", (v, d))},
                            "final_norm": {"scale": t.take("model.norm.weight", (d,))}}
  if c.tie_embeddings:
    if "lm_head.weight" in t.tensors:
      head = t.take("lm_head.weight", (v, d))
      if not np.array_equal(head, params["embed"]["embedding"]):
        _fail("config.json tie_word_embeddings=true but lm_head.weight differs from model.embed_tokens.weight")
  else:
    params["lm_head"] = {"kernel": t.take("lm_head.weight", (v, d)).T}
  blocks = {}
  for i, kind in enumerate(c.block_types):
    p = f"model.layers.{i}."
    f = c.mlp_width
    block = {"mixer_norm": {"scale": t.take(p + "input_layernorm.weight", (d,))},
             "mlp_norm": {"scale": t.take(p + "post_attention_layernorm.weight", (d,))},
             "mlp": {"gate": {"kernel": t.take(p + "mlp.gate_proj.weight", (f, d)).T},
                     "up": {"kernel": t.take(p + "mlp.up_proj.weight", (f, d)).T},
                     "down": {"kernel": t.take(p + "mlp.down_proj.weight", (d, f)).T}}}
    if kind == "attn":
      block["mixer"] = _attention_params(t, p + "self_attn.", c)
    else:
      block["mixer"] = _gdn_params(t, p + "linear_attn.", c)
    blocks[i] = block
  params["blocks"] = blocks
  extra = t.leftover()
  if extra:
    _fail(f"checkpoint has {len(extra)} tensor(s) this model does not use, e.g. {extra[0]!r} "
          "(a mixture-of-experts or unsupported layer?)")
  return params


def load_pretrained(path: str, **overrides):
  """Loads a Hugging Face Qwen3-Next-style hybrid as a ``HybridLM`` with the same logits.

  Everything is read and checked before the model is built: an error leaves no
  partial model.

  Args:
    path: a model directory with ``config.json`` and ``*.safetensors`` (one
      file, or shards with ``model.safetensors.index.json``); ``~`` expanded.
    **overrides: ``ModelConfig`` fields that do not change parameter shapes
      (:data:`OVERRIDABLE`), e.g. ``dtype="bfloat16"``, ``prelude=2``.

  Returns:
    A ``HybridLM`` (float32 parameters). ``model(tokens)`` gives the
    reference's logits; ``model.config`` records the block options.

  Raises:
    PretrainedError (a ``ValueError``): one line naming the unsupported field,
      the bad file or the mismatched tensor.
  """
  import jax.numpy as jnp
  from flax import nnx

  from sleep_jax.model import HybridLM

  path = os.path.abspath(os.path.expanduser(path))
  config = model_config_from_hf(read_hf_config(path), **overrides)
  params = params_from_hf(read_safetensors(path), config)
  abstract = nnx.eval_shape(lambda: HybridLM(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  expected = nnx.to_pure_dict(state)
  _check_tree(expected, params, "")
  nnx.replace_by_pure_dict(state, _map_tree(expected, params, lambda e, x: jnp.asarray(x, e.dtype)))
  return nnx.merge(graphdef, state)


def _check_tree(expected, got, where: str) -> None:
  """Same keys and leaf shapes (a mismatch is a bug in the mapping, not in the checkpoint)."""
  if isinstance(expected, dict):
    ek = {str(k) for k in expected}
    gk = {str(k) for k in got}
    if ek != gk:
      raise AssertionError(f"parameter mapping at {where or '<root>'}: expected {sorted(ek)}, built {sorted(gk)}")
    for k in expected:
      _check_tree(expected[k], got[k] if k in got else got[str(k)], f"{where}.{k}")
  elif tuple(expected.shape) != tuple(np.shape(got)):
    raise AssertionError(f"parameter mapping at {where}: expected {expected.shape}, built {np.shape(got)}")


def _map_tree(expected, got, fn):
  if isinstance(expected, dict):
    return {k: _map_tree(expected[k], got[k] if k in got else got[str(k)], fn) for k in expected}
  return fn(expected, got)
