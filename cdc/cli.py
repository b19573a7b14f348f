"""The ``cdc`` command line.

Each command group lives in its own module under ``cdc/commands/`` and registers its subcommands
with ``add_commands(add)``; this module only wires them and maps errors to exit codes:
0 success, 1 runtime failure (a server down, events dead-lettered), 2 bad usage or an invalid
registry. Errors print one clear line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable, Sequence

from state_models.errors import CdcError, ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]
AddCommand = Callable[[str, str, Handler], argparse.ArgumentParser]

#: One module per command group; each defines ``add_commands(add: AddCommand) -> None``.
COMMAND_MODULES = [
    "cdc.commands.registry",
    "cdc.commands.demo",
    "cdc.commands.runtime",
    "cdc.commands.datastream",
    "cdc.commands.pubsub",
    "cdc.commands.changelog",
    "cdc.commands.state",
    "cdc.commands.capture",
    "cdc.commands.job",
    "cdc.commands.checks",
    "cdc.commands.reconcile",
    "cdc.commands.pii",
    "cdc.commands.online",
    "cdc.commands.dbt",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdc",
        description="Change data capture into an immutable changelog and SCD2 history tables.",
    )
    # The global options go before the command (`cdc --config FILE tables`) or after it (`cdc
    # tables --config FILE`): the subcommands' copies default to SUPPRESS, so they never overwrite
    # a value given before the command.
    config_help = "registry file (default: $CDC_CONFIG or ./cdc.yaml)"
    parser.add_argument("--config", "-c", help=config_help)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", "-c", default=argparse.SUPPRESS, help=config_help)
        p.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
        p.set_defaults(handler=handler)
        return p

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        _error(exc, args)
        return EXIT_USAGE
    except CdcError as exc:
        _error(exc, args)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _error(exc: BaseException, args: argparse.Namespace) -> None:
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"cdc {args.command}: {exc}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
