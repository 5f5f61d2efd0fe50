"""The one-line error contract of every command, asserted once: exit code 2, one line starting `Error: `,
naming the problem."""

from __future__ import annotations


def click_error(command, args: list[str], needle: str) -> str:
    """Invoke a click command (mpee-export, mpee-train, ...) with bad `args`; return its output."""
    from click.testing import CliRunner
    res = CliRunner().invoke(command, args)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("Error: ") and res.output.strip().count("\n") == 0, res.output
    assert needle in res.output, res.output
    return res.output


def run_error(capsys, args: list[str], needle: str) -> str:
    """Run mpee-run's main with bad `args`; return what it printed on stderr."""
    from mpee_runtime.cli.run import main as run_cli
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert needle in err, err
    return err
