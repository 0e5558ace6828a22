"""Training with the seed's protocol: options (config), the run directory and its files (run_dir),
resumable checkpoints (checkpoint), a run's identity (run_info) and the loop (loop).

The names below are the documented face (`from hgpose.train import TrainConfig, train`)."""

from hgpose.train.config import TrainConfig
from hgpose.train.loop import train
from hgpose.train.run_dir import load_run_config, resume_config, run_is_finished

__all__ = ["TrainConfig", "load_run_config", "resume_config", "run_is_finished", "train"]
