"""``smegd CONFIG.yaml``: argument handling of the daemon's entry point.

Exit statuses: 0 ok (``--check``: config valid), 1 runtime failure, 2 bad
arguments or bad configuration (one line on stderr: ``smegd: <reason>``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import resources

from smegmesh.daemon.config import DEFAULT_CONFIG_PATH, VERSION, Config, ConfigError, load_config

__all__ = ["main"]

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smegd",
        description="smegmesh daemon: joins WireGuard meshes, gossips their state with its "
        "neighbours and keeps this node's WireGuard interfaces and routes in line with it. "
        "Control it with smegctl.",
        epilog=f"Example: smegd {DEFAULT_CONFIG_PATH}   |   smegd --check {DEFAULT_CONFIG_PATH}"
        "   |   every key: docs/CONFIG.md (python -m smegmesh.daemon.configdoc)",
    )
    p.add_argument(
        "config",
        metavar="CONFIG.yaml",
        nargs="?",
        default=DEFAULT_CONFIG_PATH,
        help=f"configuration file (YAML; default {DEFAULT_CONFIG_PATH})",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration, print any warnings, and exit",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log lines as text (default) or JSON objects; overrides the logFormat key",
    )
    p.add_argument("--version", action="version", version=f"smegd {VERSION}")
    p.add_argument(
        "--print-example-config",
        action="store_true",
        help="print the annotated example configuration and exit "
        f"(smegd --print-example-config | install -D -m 0600 /dev/stdin {DEFAULT_CONFIG_PATH})",
    )
    return p


def _err(msg: str) -> None:
    sys.stderr.write(f"smegd: {msg}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smegd`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.print_example_config:
        sys.stdout.write(example_config())
        return 0
    if not os.path.lexists(args.config):
        _err(
            f"{args.config}: no such file; create it with: smegd --print-example-config "
            f"| install -D -m 0600 /dev/stdin {args.config}"
        )
        return EXIT_CONFIG
    try:
        config = load_config(args.config)
    except ConfigError as e:
        for problem in e.problems:  # every problem, one line each
            _err(problem)
        return EXIT_CONFIG
    if args.check:
        for w in config.warnings:
            _err(f"warning: {w}")
        sys.stdout.write(f"{args.config}: configuration OK\n")
        return 0
    # running, the daemon logs each warning once, as a line of its log's format
    if args.log_format is not None:
        config = config.model_copy(update={"log_format": args.log_format})
    return _run(config, args.config, args.log_format)


def example_config() -> str:
    """The annotated example configuration shipped in the package."""
    return (resources.files("smegmesh.daemon") / "smegd.example.yaml").read_text("utf-8")


def _run(config: Config, path: str | None = None, log_format: str | None = None) -> int:
    from smegmesh.daemon.logsetup import quiet_grpc

    quiet_grpc()  # before grpc is imported (by the daemon's transport)
    from smegmesh.daemon import process

    try:
        return process.run(config, config_path=path, log_format=log_format)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
