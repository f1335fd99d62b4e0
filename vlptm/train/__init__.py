"""Training: the loop, optimiser and schedule, atomic checkpoints, run logs, distributed setup."""
from vlptm.train.checkpoint import latest_step, load_model_weights, resolve_checkpoint, save_checkpoint
from vlptm.train.config import (DataConfig, MaskingConfig, OptimConfig, PretrainConfig, SourceConfig,
                                TaskConfig, ValidationConfig)
from vlptm.train.loop import TaskSchedule, TrainState, train_one_epoch
from vlptm.train.optim import build_optimizer, build_scheduler, lr_multiplier
from vlptm.train.pretrain import load_pretraining_model, pretrain
from vlptm.train.run_log import VALIDATION_FILE, RunLogger, read_log
from vlptm.train.validate import evaluate_pretraining

__all__ = [
    "latest_step", "load_model_weights", "resolve_checkpoint", "save_checkpoint", "DataConfig", "MaskingConfig",
    "OptimConfig", "PretrainConfig", "SourceConfig", "TaskConfig", "ValidationConfig", "TaskSchedule", "TrainState",
    "train_one_epoch", "build_optimizer", "build_scheduler", "lr_multiplier", "load_pretraining_model",
    "pretrain", "RunLogger", "read_log", "VALIDATION_FILE", "evaluate_pretraining",
]
