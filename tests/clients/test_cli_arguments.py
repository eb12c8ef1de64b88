"""Bad arguments to any cvh command: a usage error (exit 2) that names the flag and what it takes, never a
traceback. The commands and their typed flags are enumerated from the parser itself, so a command or flag
added later is checked without touching this file."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys

import pytest

from clients.cli import build_parser, leaf_commands, main

BAD_VALUES = ("abc", "-5", "nan", "")  # no typed flag of cvh takes any of these
MISSING_FILE = "/nonexistent/cvh-test/missing.csv"
PARSER = build_parser()


def typed_arguments(command: argparse.ArgumentParser) -> list[argparse.Action]:
    """The command's arguments that check their value (a type or a list of choices)."""
    return [action for action in command._actions
            if (action.type is not None or action.choices) and not isinstance(action, argparse._SubParsersAction)]


def bad_calls() -> list[tuple[list[str], str]]:
    """(argv, the flag the error must name) for every typed argument of every command, with each bad value;
    files to read are given a path that does not exist."""
    calls, seen = [], set()
    for command in leaf_commands(PARSER):
        path = command.prog.split()[1:]
        positionals = [action for action in command._actions if not action.option_strings]
        for action in typed_arguments(command):
            if id(action) in seen:  # flags shared by every client command (--timeout, --tls-ca) are one action
                continue
            seen.add(id(action))
            name = action.option_strings[0] if action.option_strings else action.metavar or action.dest
            values = BAD_VALUES + ((MISSING_FILE,) if getattr(action.type, "__name__", "") in ("existing_file", "existing_path") else ())
            for value in values:
                if action.choices and value == "":
                    continue  # an empty choice reads as a missing one: also exit 2, but naming no flag
                if action.option_strings:
                    argv = [*path, action.option_strings[0], value]
                else:  # the positionals before it get a plain placeholder each
                    argv = [*path, *["x"] * positionals.index(action), value]
                calls.append((argv, name))
    return calls


CALLS = bad_calls()


def run(argv: list[str]) -> tuple[int, str]:
    """main() as the `cvh` script runs it: the exit code and stderr; any other exception fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
    return code, err.getvalue()


def test_every_command_and_typed_flag_is_covered():
    commands = {tuple(command.prog.split()[1:]) for command in leaf_commands(PARSER)}
    assert {("demo",), ("customers", "get"), ("customers", "list"), ("customers", "delete"), ("signals", "history"),
            ("import",), ("models", "create"), ("serve",), ("loadtest",), ("db", "upgrade")} <= commands
    covered = {tuple(argv[:2]) for argv, _ in CALLS}
    assert len(CALLS) > 100 and ("demo", "--customers") in covered and ("import", MISSING_FILE) in covered


@pytest.mark.parametrize("argv, flag", CALLS, ids=[" ".join(argv) for argv, _ in CALLS])
def test_a_bad_value_is_a_usage_error_naming_the_flag(argv, flag):
    # main() parses first, and a parse error ends it there: parsing alone shows what `cvh ...` prints, and a value
    # the parser wrongly accepted never starts the command (a load test, a server).
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as parsed:
        PARSER.parse_args(argv)
    assert parsed.value.code == 2, f"cvh {' '.join(argv)} was accepted"
    assert "Traceback" not in err.getvalue() and "usage: cvh" in err.getvalue()
    assert f"argument {flag}" in err.getvalue() or f"argument {flag.upper()}" in err.getvalue(), err.getvalue()


def test_the_reported_case_through_the_installed_entry_point():
    done = subprocess.run([sys.executable, "-m", "clients.cli", "demo", "--customers", "0"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--customers" in done.stderr and "from 1 to 1,000,000" in done.stderr


def test_version_comes_from_the_package_metadata():
    from importlib import metadata

    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and out.getvalue().strip() == f"cvh {metadata.version('cvh')}"


def test_an_unknown_database_revision_is_a_usage_error(tmp_path):
    code, err = run(["db", "upgrade", "no-such-revision", "--database-url", f"sqlite:///{tmp_path / 'x.db'}"])
    assert code == 2 and "no-such-revision" in err and "Traceback" not in err


def test_an_unexpected_failure_is_one_line_not_a_traceback(monkeypatch):
    from clients.commands import hierarchy

    def broken(args):
        raise RuntimeError("boom")
    monkeypatch.setattr(hierarchy, "tiers", broken)
    code, err = run(["tiers"])
    assert code == 1 and "Traceback" not in err and "RuntimeError: boom" in err and "CVH_DEBUG=1" in err


@pytest.mark.parametrize("text, value", [("20000", 20_000), ("500k", 500_000), ("10m", 10_000_000), ("1.5M", 1_500_000),
                                         ("1_000_000", 1_000_000), ("2,500", 2_500)])
def test_a_count_takes_a_number_or_an_abbreviation(text, value):
    from clients.commands.common import count

    assert count(1)(text) == value


@pytest.mark.parametrize("text", ["0", "abc", "m", "1.0005k", "nan", "inf", "-1k", "", "2g"])
def test_a_count_refuses_what_is_not_a_whole_number_in_range(text):
    from clients.commands.common import count

    with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
        count(1, 1_000_000_000 - 1)(text)
