"""The Python API the README and the docs pages document: top-level names, and their code against the
real signatures (so the documented calls keep working)."""

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

import hgpose
from hgpose.runtime.files import UserError

README = Path(__file__).resolve().parents[1] / "README.md"
DOC_PAGES = sorted((README.parent / "docs").rglob("*.md"))


def test_user_error_is_importable_from_the_top_level(tmp_path):
    from hgpose import UserError as TopLevel

    assert TopLevel is UserError and "UserError" in hgpose.__all__
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(hgpose.UserError, match="missing.safetensors"):
        hgpose.load(missing)


def _readme_python_blocks() -> list[ast.Module]:
    """The ```python blocks of the README and of every docs page."""
    assert DOC_PAGES, "no docs/*.md pages found"
    blocks = [block for page in [README, *DOC_PAGES]
              for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)]
    return [ast.parse(block) for block in blocks]


def test_the_readme_python_api_matches_the_code():
    blocks = _readme_python_blocks()
    names = {"hgpose": hgpose}
    for tree in blocks:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    names[alias.name] = getattr(module, alias.name)  # AttributeError: the README is wrong
    documented = {"train", "TrainConfig", "resume_config", "evaluate_checkpoint"}
    assert documented <= set(names)
    called = set()
    for tree in blocks:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            target = (names.get(func.id) if isinstance(func, ast.Name)
                      else getattr(hgpose, func.attr, None) if isinstance(func, ast.Attribute)
                      and isinstance(func.value, ast.Name) and func.value.id == "hgpose" else None)
            if target is None or not callable(target):
                continue
            parameters = inspect.signature(target).parameters
            for keyword in node.keywords:
                assert keyword.arg in parameters, f"README calls {ast.unparse(node)}: no parameter {keyword.arg}"
            called.add(getattr(target, "__name__", ""))
    assert {"train", "TrainConfig", "evaluate_checkpoint", "load"} <= called


def test_the_readme_says_how_to_get_the_hgpose_command_that_make_installs():
    text = README.read_text(encoding="utf-8")
    assert "source .venv/bin/activate" in text and ".venv/bin/hgpose" in text
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^VENV\s*\?=\s*\.venv$", makefile, flags=re.M)  # the folder the README names
    scripts = (README.parent / "pyproject.toml").read_text()
    assert 'hgpose = "hgpose.cli:main"' in scripts  # what puts `hgpose` into .venv/bin
