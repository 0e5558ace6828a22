"""Every command's --help: defaults shown once and only when they mean something, wrapped text,
metavars that follow one convention."""

import pytest

from hgpose.cli import build_parser, main

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def _help(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_every_command_is_walked():
    assert {"synth", "prepare", "train", "evaluate", "report", "predict", "export", "explore",
            "summary"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help_shows_each_default_once_and_never_none_or_a_flag_value(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = _help(capsys, [command] if command else [])
    for bad in ("(default: None)", "(default: True)", "(default: False)", "(default: [", "(default "):
        assert bad not in text, f"{command}: {bad!r} in --help"
    subparser = build_parser()._subparsers._group_actions[0].choices.get(command)
    if subparser is None:
        return
    formatter = subparser._get_formatter()
    for action in subparser._actions:
        shown = formatter._get_help_string(action) or ""
        assert shown.count("(default") <= 1, f"{command} {action.option_strings}: {shown}"
        if "_" in action.dest and action.option_strings and action.nargs != 0:
            option = action.option_strings[-1]
            assert f"{option} {action.dest.upper()}" not in text  # argparse's raw fallback, e.g. BATCH_SIZE
    assert max(len(line) for line in text.splitlines()) <= 100  # descriptions and help wrapped


def test_help_states_the_defaults_that_matter(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    prepare = " ".join(_help(capsys, ["prepare"]).split())
    assert "(default: all CPUs)" in prepare and "(default: train2017 val2017)" in prepare
    summary = " ".join(_help(capsys, ["summary"]).split())
    assert "--depth N down/upsamples in each hourglass (default: 4)" in summary
    evaluate = _help(capsys, ["evaluate"])
    assert "--checkpoint CKPT" in evaluate and "--data DIR" in evaluate and "--batch-size N" in evaluate
