"""Training with the seed's protocol: options (config), the run directory and its files (run_dir),
resumable checkpoints (checkpoint), a run's identity (run_info) and the loop (loop).

The names below are the documented face (`from hgpose.train import TrainConfig, train`); they load on
first use, so that importing hgpose.train.config (the CLI's help does) does not load the loop."""

__all__ = ["TrainConfig", "load_run_config", "resume_config", "run_is_finished", "train"]
_HOMES = {"TrainConfig": "config", "train": "loop", "load_run_config": "run_dir", "resume_config": "run_dir",
          "run_is_finished": "run_dir"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'hgpose.train' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"hgpose.train.{_HOMES[name]}"), name)
