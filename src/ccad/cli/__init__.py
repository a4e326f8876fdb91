"""The ``ccad`` command line: a table of commands over the Python API, nothing more.

Each command is a :class:`~ccad.cli.base.Command` (name, help, ``add_arguments``, ``run``) in the module of
its kind: :mod:`~ccad.cli.train`, :mod:`~ccad.cli.predict`, :mod:`~ccad.cli.bundles`, :mod:`~ccad.cli.site`,
:mod:`~ccad.cli.services`. Every :class:`ccad.errors.CcadError` becomes one line on stderr and exit code 2;
the library names its parameters in backquotes (`` `resume` needs `out` ``) and :func:`flag_words` turns
them into the command's own flags (``--resume needs --out``), here and nowhere else.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from ..errors import CcadError
from . import bundles, predict, services, site, train
from .base import Command

EXIT_USAGE = 2
#: Which extra brings a module a command may need (the base install predicts and serves on ONNX Runtime).
EXTRAS = {
    "tensorflow": "train",
    "keras": "train",
    "tf2onnx": "train",
    "onnx": "train",
    "skl2onnx": "train",
    "ai_edge_litert": "train",
    "ray": "scale",
    "pyarrow": "scale",
}
#: Every command, in the order ``ccad --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    *train.COMMANDS,
    *predict.COMMANDS,
    *bundles.COMMANDS,
    *site.COMMANDS,
    *services.COMMANDS,
)
#: Library parameters whose flag is not ``--`` + the parameter's name.
PARAMETER_FLAGS = {
    "fmt": "--format",
    "heatmap_dir": "--heatmap",
    "out_csv": "--out",
    "verify_key": "--verify",
    "max_upload_bytes": "--max-upload-mb",
    "max_request_bytes": "--max-request-mb",
    "max_dataset_bytes": "--max-dataset-mb",
    "header_timeout_s": "--header-timeout",
    "score_timeout_s": "--score-timeout",
    "engine_ray": "--engine ray",
}
_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccad", description="COVID-19 chest X-ray screening aid (not a diagnosis)")
    parser.add_argument("--version", action="version", version=f"ccad {__import__('ccad').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return parser


def flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's destination -> its long flag, in ``parser`` and its sub-commands' parsers."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                flags = {**flags_of(child), **flags}
        elif action.option_strings:
            flags[action.dest] = max(action.option_strings, key=len)
        elif action.metavar:
            flags[action.dest] = str(action.metavar)
    return flags


def flag_words(message: str, flags: dict[str, str]) -> str:
    """A library message in the command line's words: `` `name` `` -> the flag of that parameter."""

    def word(match: re.Match) -> str:
        name = match.group(1)
        return PARAMETER_FLAGS.get(name) or flags.get(name) or f"--{name.replace('_', '-')}"

    return _PARAMETER.sub(word, message)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    try:
        code = command.run(args)
    except CcadError as e:
        chosen = parser._subparsers._group_actions[0].choices[args.command]
        print(f"ccad: error: {flag_words(str(e), flags_of(chosen))}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"ccad: error: ccad {args.command} needs the {extra} extra ({e.name} is not installed): "
            f"pip install 'ccad[{extra}]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except OSError as e:  # a folder that cannot be written, a disk that is full: the system's words, one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"ccad: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ccad: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
