"""The ``aptune`` command line: one file per subcommand, registered here.

Each subcommand module exposes ``add_parser(subparsers)`` which registers its
arguments and sets ``func`` to a callable taking the parsed namespace and
returning an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from aptune._version import __version__
from aptune.engine.distributed import joined_a_process_group
from aptune.errors import AptuneError

# Module names under aptune.cli; a missing module is skipped so partial installs still work.
SUBCOMMAND_MODULES = ("data", "train", "eval", "predict", "pretrain", "demo", "bench", "merge")


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its usage errors as one ``error: ...`` line like every other aptune error
    (``--help`` still shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="aptune",
        description="Attention Prompt Tuning for frozen pretrained video transformers.",
    )
    parser.add_argument("--version", action="version", version=f"aptune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"aptune.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"aptune.cli.{name}":
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        refuse_empty_paths(args)
        return int(args.func(args) or 0)
    except AptuneError as exc:
        if getattr(exc, "report", True):
            print(f"error: {exc}", file=sys.stderr)
        return _leave(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return _leave(130)


# argument destinations that name a file or folder a command writes, with the flag users type
OUTPUT_ARGUMENTS = {
    "output_dir": "--output-dir",
    "json_out": "--json",
    "json": "--json",
    "out": "OUT",
    "output": "--output",
    "cache_dir": "--cache-dir",
}


def refuse_empty_paths(args: argparse.Namespace) -> None:
    """An empty output path would mean the current folder: refused before anything runs."""
    for dest, flag in OUTPUT_ARGUMENTS.items():
        value = getattr(args, dest, None)
        if isinstance(value, str) and not value.strip():
            raise AptuneError(f"{flag} is empty: give the file or folder to write to")


def _leave(status: int) -> int:
    """A failed rank of a distributed run exits at once: tearing down a process group whose
    peers may still wait in a collective can block, and the launcher stops the rest.  Even
    after the group was destroyed (an agreed stop), the process skips C++ static destructors:
    with gloo one of them sometimes aborts ("terminate called without an active exception",
    exit -6 instead of 2, about one run in ten here)."""
    if joined_a_process_group():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
