from dataclasses import asdict, fields
from pathlib import Path

import yaml

from hgpose.cli.common import add_model_arguments, model_config_from_args
from hgpose.model.hourglass import ModelConfig
from hgpose.runtime.compile import COMPILE_MODES
from hgpose.runtime.files import UserError
from hgpose.runtime.precision import PRECISIONS
from hgpose.train.config import TrainConfig

HELP = "train with the seed's protocol (batch 16, MSE, RMSProp 2.5e-4, one PCK-plateau LR drop)"
DESCRIPTION = (
    HELP + ". After every epoch: train loss, val loss and val PCK go to metrics.csv and a checkpoint is "
    "saved. Multi-GPU: `torchrun --nproc-per-node N -m hgpose train ...`."
)

# (flag, type, help); the defaults are TrainConfig's (shown in --help), applied after parsing so that
# --resume can tell which options were given explicitly
OPTIONS = [
    ("epochs", int, "epochs to train (no automatic early stopping)"),
    ("batch_size", int, "images per optimisation step, over all processes"),
    ("lr", float, "initial RMSProp learning rate"),
    ("lr_patience", int, "epochs without a new best val PCK before the one LR drop"),
    ("lr_factor", float, "factor of the one LR drop"),
    ("seed", int, "seed for init, data order and the held-out split"),
    ("precision", str, "bf16 autocast (loss in fp32), fp32, or auto: bf16 where the hardware has it"),
    ("device", str, "auto (cuda when available), cpu, cuda, cuda:N"),
    ("workers", int, "data loader worker processes"),
    ("subset", int, "use a seeded random N training (and at most N validation) instances"),
    ("train_split", str, "training split name"),
    ("val_split", str, "separate validation split, e.g. val2017"),
    ("val_fraction", float, "fraction of training images held out for validation"),
    ("cache", str, "auto (use a current `hgpose prepare` cache when present) or off"),
    ("cache_dir", str, "where `hgpose prepare --cache-dir` wrote the caches"),
    ("threads", int, "torch threads on the CPU; the thread count changes the numbers, so --resume restores the "
     "run's unless this or OMP_NUM_THREADS is given"),
]
TRAIN_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
# how --help shows the options whose TrainConfig default is None
NONE_MEANS = {"threads": "OMP_NUM_THREADS, else torch's choice", "subset": "all",
              "val_split": "a held-out part of the training split", "cache_dir": "DATA/hgpose_cache"}


def _default_text(name: str) -> str:
    default = TRAIN_DEFAULTS[name]
    return NONE_MEANS[name] if default is None else str(default)


def add_arguments(parser):
    parser.add_argument("--data", type=Path, help="COCO-style root with annotations/ and image folders")
    parser.add_argument("--out", type=Path, metavar="RUN_DIR",
                        help="run directory (default: runs/train, runs/train2, ...)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("--config", type=Path, metavar="YAML",
                        help="start from a file of options with the keys of a run's config.yaml, or a shipped "
                        "config by name: seed (the defaults) or demo; flags given here override it")
    for name, kind, text in OPTIONS:
        choices = {"precision": PRECISIONS, "cache": ["auto", "off"]}.get(name)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None, choices=choices,
                            help=f"{text} (default: {_default_text(name)})")
    parser.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES,
                        metavar="MODE",
                        help="torch.compile the training step (compiles for a minute or more first); MODE: "
                             "default (what --compile alone means), reduce-overhead (CUDA graphs: no per-kernel "
                             "launch cost on a GPU; default on the CPU) or off")
    parser.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm across processes")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bar (one line per epoch only)")
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                        help="write no TensorBoard event files (default: RUN_DIR/tensorboard when the "
                        "tensorboard package is installed; view with `tensorboard --logdir runs`)")
    parser.add_argument("--no-report", action="store_true", help="skip writing Figure 2 and Table 1 at the end")
    add_model_arguments(parser)
    add_augment_arguments(parser)


def _given(args) -> dict:
    names = [o[0] for o in OPTIONS] + ["compile", "sync_bn", "progress", "tensorboard"]
    given = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.data is not None:
        given["data"] = str(args.data)
    return given


# (flag, AugmentConfig fields, help); off unless --augment (or `augment: {enabled: true}` in --config)
AUGMENT_FLAGS = [
    ("--aug-flip", ("flip",), "P", "probability of a horizontal flip, left/right joints swapped (default: 0.5)"),
    ("--aug-rotate", ("rotate",), "DEG", "rotation drawn uniformly in +-DEG degrees (default: 30)"),
    ("--aug-rotate-p", ("rotate_p",), "P", "probability of a rotation (default: 0.4)"),
    ("--aug-scale", ("scale_min", "scale_max"), "LO,HI", "the person drawn LO..HI times as large (default: 0.75,1.25)"),
    ("--aug-half-body", ("half_body",), "P", "probability of zooming onto the upper or lower body (default: 0)"),
]


def add_augment_arguments(parser):
    group = parser.add_argument_group("augmentation (on the training device; see docs/commands/train.md)")
    group.add_argument("--augment", action="store_true", default=None,
                       help="augment the training batches: flip, rotation, scale (and half-body if asked)")
    for flag, _, metavar, text in AUGMENT_FLAGS:
        group.add_argument(flag, metavar=metavar, default=None, help=text)


def augment_given(args) -> dict:
    """The augment fields the flags set (a partial `augment:` block)."""
    given = {"enabled": True} if args.augment else {}
    for flag, names, metavar, _ in AUGMENT_FLAGS:
        text = getattr(args, flag[2:].replace("-", "_"))
        if text is None:
            continue
        parts = text.split(",")
        try:
            values = [float(part) for part in parts]
        except ValueError:
            values = []
        if len(values) != len(names):
            raise UserError(f"{flag} expects {metavar}, got {text!r}")
        given.update(zip(names, values))
    return given


def _with_augment(saved: dict, given: dict, source) -> dict:
    """The augment block: `saved` (a config file's or a run's) with the flags' values on top."""
    from hgpose.data.augment import AugmentConfig

    merged = AugmentConfig.from_dict(dict(saved or {}), source).to_dict() | given
    if not merged["enabled"] and set(given) - {"enabled"}:
        flags = [flag for flag, names, _, _ in AUGMENT_FLAGS if set(names) & set(given)]
        raise UserError(f"{', '.join(flags)} given without --augment: augmentation is off, so they would do nothing")
    return AugmentConfig.from_dict(merged, "augmentation flags").to_dict()


def config_from_file(path: Path) -> dict:
    """The options of a --config YAML file (the keys of a run's config.yaml) or shipped config name."""
    from hgpose.configs import resolve_config, shipped_configs

    found = resolve_config(path)
    if found is None:
        raise UserError(f"{path}: config file not found (shipped configs: {', '.join(shipped_configs())})")
    path = found
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of training options")
    return values


def build_config(args):
    """The TrainConfig the command line asks for: a run's saved config for --resume, else the --config
    file's options (if any) with the flags given on top."""
    from hgpose.train.run_dir import resume_config

    given = _given(args)
    model_given = args.model_config or any(getattr(args, f.name) is not None for f in fields(ModelConfig))
    if args.resume:
        if args.config:
            raise UserError("--config starts a new run; --resume continues one with its own config.yaml")
        if model_given:
            given_model = _resume_model(args)
            if given_model is not None:
                given["model"] = given_model
        if augment_given(args):
            saved = resume_config(args.resume, {}).augment.to_dict()
            given["augment"] = _with_augment(saved, augment_given(args), args.resume)
        config = resume_config(args.resume, given)
    else:
        values = config_from_file(args.config) if args.config else {}
        values = values | given | ({"out": str(args.out)} if args.out else {})
        if augment_given(args) or "augment" in values:
            values["augment"] = _with_augment(values.get("augment"), augment_given(args), args.config or "options")
        file_model = values.get("model") or {}
        if not isinstance(file_model, dict):
            raise UserError(f"{args.config}: model must be a mapping of model fields")
        flags_model = {k: v for k, v in asdict(model_config_from_args(args)).items() if _model_flag_given(args, k)}
        try:
            values["model"] = ModelConfig.from_dict(file_model | flags_model)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{args.config or 'model flags'}: {exc}") from None
        if not values.get("data"):
            raise UserError("--data DIR is required (or --resume RUN_DIR, or a --config file with data:)")
        config = TrainConfig.from_mapping(values, args.config or "options")
    return config


INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C; also after SIGTERM (saved, resumable)


def run(args):
    from hgpose.train.loop import train
    from hgpose.train.run_dir import run_is_finished

    config = build_config(args)
    run_dir = train(config, resume=args.resume)
    if not run_is_finished(run_dir, config):  # stopped by Ctrl-C or SIGTERM: saved, and it said how to resume
        return INTERRUPTED
    if not args.no_report and _is_main_process() and (run_dir / "metrics.csv").is_file():
        from hgpose.report import write_report

        outputs = write_report(run_dir)
        print("report: " + ", ".join(str(p) for p in outputs.values()))
    return 0


def _resume_model(args) -> dict | None:
    """The model fields --resume was given that differ from the run's: an error naming each field
    and both values, unless the run never finished an epoch (then it starts again with them)."""
    from hgpose.model.weights import beyond_limits
    from hgpose.train.restart import never_finished_an_epoch
    from hgpose.train.run_dir import load_run_config

    saved = asdict(load_run_config(args.resume).model)
    if args.model_config:  # a model file describes a whole model
        given = asdict(model_config_from_args(args))
    else:  # flags change only their fields
        given = {f.name: getattr(args, f.name) for f in fields(ModelConfig) if getattr(args, f.name) is not None}
        if beyond_limits(given):
            raise UserError(f"model config: {beyond_limits(given)}")
    differ = [f"{k} (run: {saved[k]}, given: {v})" for k, v in given.items() if saved[k] != v]
    if not differ:
        return None
    if not never_finished_an_epoch(args.resume):
        raise UserError(f"{args.resume}: --resume with a model config that differs from the run's: "
                        f"{', '.join(differ)}")
    try:
        ModelConfig.from_dict(saved | given)
    except ValueError as exc:
        raise UserError(f"model flags: {exc}") from None
    return saved | given


def _model_flag_given(args, name: str) -> bool:
    """Whether a model field came from a model flag or --model-config (else the --config file's
    value, or the default, stands)."""
    return bool(args.model_config) or getattr(args, name, None) is not None


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
