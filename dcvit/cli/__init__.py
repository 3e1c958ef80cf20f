"""The `dcvit` command line: a thin layer over the Python API.

Each command group lives in its own module and lists its commands in COMMANDS; this module only builds the
parser from those lists and runs the chosen command. Errors a user can fix (bad numbers, unknown models,
unsupported architectures, missing files, and any OSError: a full disk, a name too long) print one line on
stderr and exit 2; `--traceback` (before or after the command) or DCVIT_TRACEBACK=1 prints the full traceback
instead. `--import MODULE`, before or after the
command, imports a plugin that registers an adapter before the command runs.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings

from . import cascade, compress, demo, export, models
from .common import (
    OneLineParser,
    configure_logging,
    import_argument,
    import_plugins,
    os_error_line,
    quiet_argument,
    traceback_argument,
    wants_traceback,
)

COMMANDS = [*models.COMMANDS, *compress.COMMANDS, *cascade.COMMANDS, *export.COMMANDS, *demo.COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dcvit",
        description="Few-shot compression of vision transformers "
        "(DC-ViT) and cascades of compressed companions. See README.md.",
    )
    import_argument(parser)
    traceback_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.arguments(p)
        quiet_argument(p)  # every command: progress and status lines are logging, silenced alike
        # after the command too; its own dest, since a subcommand's values would replace the global ones
        import_argument(p, dest="imports_after", default=argparse.SUPPRESS)
        traceback_argument(p, default=argparse.SUPPRESS)  # given after the command, it keeps the global value
        p.set_defaults(run=command.run)
    return parser


def silence_known_noise() -> None:
    """Hide only warnings known to be noise for a CLI user; every other warning is shown.

    macs, plan, eval, bench, synth, compress and cascade on the shipped models raise no warning without any
    filter (checked by hand); dcvit's own notices (a saver's mean/std, a model left unprepared for inference)
    are RuntimeWarnings and stay visible; the library silences its dependencies' noise where it calls them
    (fvcore's import and tracing in dcvit/macs.py, torchvision's init notes in dcvit/factory.py)."""
    # PIL, converting a user's palette PNG whose transparency is a byte string to RGB
    # (dcvit.imagefolder.load_image): it suggests RGBA, but dropping the alpha is intended, as in torchvision's
    # loader; without this filter the first such PNG in a user's image folder prints it.
    warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)


def flag_message(err: Exception, args: argparse.Namespace) -> str:
    """The error in one line; an API argument refused (dcvit.checks.ArgumentError) named as the command's flag
    that set it ("calibration_size must be ..." -> "--calibration-size must be ..."), without the API's "or None":
    a flag's None is leaving it out, which is no value to type."""
    message = str(err)
    argument = getattr(err, "argument", None)
    if argument and hasattr(args, argument) and message.startswith(err.what):
        rest = message[len(err.what) :].replace(" or None; got", "; got", 1)
        message = f"--{argument.replace('_', '-')}{rest}"
    return message


def main(argv: list[str] | None = None) -> int:
    silence_known_noise()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed in one line
        return int(done.code or 0)
    configure_logging(args.quiet)
    succeeded = False
    try:
        import_plugins([*(args.imports or []), *getattr(args, "imports_after", [])])
        args.run(args)
        succeeded = True
    except (ValueError, FileNotFoundError) as err:  # dcvit's UnsupportedModelError is a ValueError
        if wants_traceback(args):
            traceback.print_exc()
        else:
            print(f"dcvit {args.command}: error: {flag_message(err, args)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except OSError as err:  # a full disk, a name too long, a path through a file: the user's to fix
        if wants_traceback(args):
            traceback.print_exc()
        else:
            print(f"dcvit {args.command}: error: {os_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dcvit {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "dcvit.accel" in sys.modules:  # a command that ran a model: its first line (start_run) is settled
            sys.modules["dcvit.accel"].end_command(succeeded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
