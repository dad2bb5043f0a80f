"""Multi-host start-up: ``jax.distributed.initialize`` from arguments or the environment.

Each host runs the same command. The coordinator address, process count and
process id come from the arguments (``launch/train.py`` flags) or, failing
that, from ``SLEEP_JAX_COORDINATOR_ADDRESS`` / ``SLEEP_JAX_NUM_PROCESSES`` /
``SLEEP_JAX_PROCESS_ID``. On TPU pods and SLURM, ``auto=True`` lets jax detect
everything itself. Each host then reads its own shard of the data
(``shard_index = jax.process_index()``) and the global batch is assembled with
``jax.make_array_from_process_local_data`` (see ``parallel.py``).
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)

ENV_ADDRESS = "SLEEP_JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "SLEEP_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SLEEP_JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "")
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> bool:
  """Starts ``jax.distributed`` when several processes are requested.

  Must run before any other jax call. On CPU it selects the gloo collectives,
  which cross-process all-reduces need.

  Args:
    coordinator_address: ``host:port`` of process 0.
    num_processes: total processes.
    process_id: this process's id in ``[0, num_processes)``.
    auto: call ``jax.distributed.initialize()`` with no arguments (TPU pods,
      SLURM) even if nothing is given.

  Returns:
    True if ``jax.distributed`` was initialised.

  Raises:
    ValueError: for an incomplete or inconsistent setting.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  given = [x is not None for x in (coordinator_address, num_processes, process_id)]
  if not any(given):
    if auto:
      jax.distributed.initialize()
      return True
    return False
  if not all(given):
    raise ValueError("multi-host needs coordinator_address, num_processes and process_id together; got "
                     f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
                     f"process_id={process_id!r}")
  if num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
  if num_processes == 1:
    return False
  if os.environ.get("JAX_PLATFORMS", "") in ("cpu",) or jax.config.jax_platforms == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
