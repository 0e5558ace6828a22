"""hgpose's version, written once: the package, `hgpose --version`, run_info.json and the wheel's
name (pyproject reads it from here) all take it from this line."""

__version__ = "0.2.0"
