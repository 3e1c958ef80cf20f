"""Running the dcvit CLI in-process from tests, and the shape every bad-input error must have."""

from dcvit.cli import main


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of `dcvit ARGV` run in this process."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *fragments):
    """Exit 2, one line on stderr, no traceback, and every fragment in it."""
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
