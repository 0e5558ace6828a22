"""Training options: every default of `hgpose train` in one dataclass (the CLI's flags are made from
it), checked on construction, and read back from a run's config.yaml or a --config file."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, fields

from hgpose.data.augment import AugmentConfig
from hgpose.model.hourglass import ModelConfig
from hgpose.model.weights import beyond_limits
from hgpose.runtime.compile import compile_mode
from hgpose.runtime.files import UserError
from hgpose.runtime.precision import PRECISIONS

# options that may differ on --resume without changing the run's result
# (threads does change the numbers; a resume names it when it differs from the run's record)
RESUMABLE_OVERRIDES = {"epochs", "device", "workers", "compile", "progress", "cache", "cache_dir", "tensorboard",
                       "threads"}
# written to config.yaml beside the options, for the record (not options: --config ignores them)
RECORDED_KEYS = ("data_as_typed", "annotations_sha1")


@dataclass
class TrainConfig:
    data: str
    out: str | None = None
    epochs: int = 100
    batch_size: int = 16  # global: split across processes under torchrun
    lr: float = 2.5e-4
    lr_patience: int = 5
    lr_factor: float = 0.2
    seed: int = 0
    precision: str = "auto"  # bf16 where the hardware has it (no accuracy cost on the demo), else fp32
    device: str = "auto"
    workers: int = 2
    compile: str = "off"  # off, default (torch.compile) or reduce-overhead (CUDA graphs); see compile_modes
    sync_bn: bool = False
    subset: int | None = None  # a seeded random N training (and at most N validation) instances
    train_split: str = "train2017"
    val_split: str | None = None  # None: hold out val_fraction of train2017's images
    val_fraction: float = 0.05
    cache: str = "auto"
    cache_dir: str | None = None  # where `hgpose prepare --cache-dir` put the caches
    progress: bool = True
    tensorboard: bool = True  # event files in RUN_DIR/tensorboard when the package is installed
    threads: int | None = None  # torch threads; None: OMP_NUM_THREADS or torch's choice, on --resume the run's
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # off: the seed's protocol

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if not isinstance(self.augment, AugmentConfig):  # the config.yaml block; old runs have none
            self.augment = AugmentConfig.from_dict(self.augment)
        self.compile = compile_mode(self.compile)  # runs saved with compile: true/false still load
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "lr_patience"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 < self.lr_factor <= 1):
            raise UserError("--lr must be > 0 and --lr-factor in (0, 1]")
        if self.workers < 0:
            raise UserError(f"--workers must be >= 0 (0 loads data in the training process), got {self.workers}")
        if self.subset is not None and self.subset < 1:
            raise UserError(f"--subset must be a number of instances >= 1 (leave it out for all), got {self.subset}")
        if self.val_split is None and not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must be in (0, 1), got {self.val_fraction}; to validate on a "
                            "separate annotation file use --val-split NAME instead")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1 (leave it out for torch's choice), got {self.threads}")
        if beyond_limits(asdict(self.model)):
            raise UserError(f"model config: {beyond_limits(asdict(self.model))}")
        if self.cache not in ("auto", "off"):
            raise UserError(f"--cache must be auto or off, got {self.cache!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "model": asdict(self.model)}

    @classmethod
    def from_mapping(cls, values: dict, source) -> TrainConfig:
        """A config from YAML keys (a run's config.yaml or a --config file); a key that is not an
        option or a value of the wrong type is a one-line error naming `source`."""
        if not isinstance(values, dict):
            raise UserError(f"{source}: expected a mapping of training options")
        values = {k: v for k, v in values.items() if k not in RECORDED_KEYS}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"{source}: unknown option(s) {', '.join(unknown)} (known: {', '.join(known)})")
        _check_model_limits(values.get("model"), source)
        defaults = cls(data="")
        if "augment" in values:
            values["augment"] = AugmentConfig.from_dict(values["augment"], source)
        for key, value in list(values.items()):
            if isinstance(getattr(defaults, key), float) and isinstance(value, str):
                with contextlib.suppress(ValueError):  # YAML reads 1e-3 (no dot) as a string
                    values[key] = value = float(value)
            default = getattr(defaults, key)
            kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(type(default))
            if key in ("subset", "threads", "val_split", "cache_dir", "out", "data"):
                kinds = (int,) if key in ("subset", "threads") else (str,)
            if kinds and value is not None and (not isinstance(value, kinds) or
                                                (isinstance(value, bool) and bool not in kinds)):
                raise UserError(f"{source}: {key} must be {kinds[-1].__name__}, got {value!r}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{source}: {exc}") from None


def _check_model_limits(model, source) -> None:
    """A model block of a file gets the bounds the model flags and checkpoint headers get: a
    hand-edited `features: 1000000000` is one line naming the file, not a 256 GB allocation."""
    values = asdict(model) if isinstance(model, ModelConfig) else model
    if isinstance(values, dict) and beyond_limits(values):
        raise UserError(f"{source}: model: {beyond_limits(values)}")
