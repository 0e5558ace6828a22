"""The example training configs, shipped inside the package so that an installed wheel has them:
`hgpose train --config demo` (what `make demo` trains) and `--config seed` (exactly the defaults)."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def shipped_configs() -> list[str]:
    """The names `--config` accepts without a path, e.g. ["demo", "seed"]."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def resolve_config(path) -> Path | None:
    """The file a --config value names: an existing file as given (a file in the working directory
    wins), else a bare name such as `demo` or `demo.yaml` of a shipped config; None when neither."""
    path = Path(path)
    if path.is_file():
        return path
    if len(path.parts) == 1 and path.suffix in ("", ".yaml"):
        shipped = CONFIG_DIR / f"{path.stem}.yaml"
        if shipped.is_file():
            return shipped
    return None
