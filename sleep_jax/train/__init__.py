"""Training: optimizer, pure train step, data parallelism, checkpoints, metrics and the loop.

The library reads no flags: ``launch/`` builds the frozen configs and calls
:func:`train` with a :class:`RunSpec` (model factory, loss, data, evaluator).
Figures are the experiment tools' concern: ``launch/plotting.py``.
"""
from sleep_jax.train.checkpoint import CheckpointError, Checkpointer, load_params
from sleep_jax.train.config import OptimizerConfig, TrainConfig
from sleep_jax.train.distributed import initialize as initialize_distributed
from sleep_jax.train.loop import RunSpec, TrainResult, evaluate_checkpoint, train
from sleep_jax.train.metrics import NonFiniteError
from sleep_jax.train.optimizer import describe_param_groups, make_optimizer
from sleep_jax.train.parallel import data_parallel_train_step, make_data_mesh, make_data_parallel_train_step
from sleep_jax.train.state import TrainState, create_train_state
from sleep_jax.train.step import make_eval_step, make_train_step
from sleep_jax.train.tensorboard import TensorBoardWriter

__all__ = [
    "CheckpointError", "Checkpointer", "NonFiniteError", "OptimizerConfig", "RunSpec", "TensorBoardWriter",
    "TrainConfig", "TrainResult", "TrainState", "create_train_state", "data_parallel_train_step",
    "describe_param_groups", "evaluate_checkpoint",
    "initialize_distributed", "load_params", "make_data_mesh", "make_data_parallel_train_step", "make_eval_step",
    "make_optimizer", "make_train_step", "train",
]
