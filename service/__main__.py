"""Run the service: `python -m service --bundle DIR [--host HOST --port PORT]`.

The same as `lmindexer serve`; every other setting comes from LMINDEXER_* environment variables.
"""

from __future__ import annotations

import argparse
import sys

from service import cli


def main(argv: list[str] | None = None) -> int:
    """Parse the options and serve."""
    parser = argparse.ArgumentParser(prog="python -m service", description=cli.HELP)
    cli.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cli.run(args)
    except (cli.SettingsError, cli.BundleError) as exc:
        sys.stderr.write(f"lmindexer serve: error: {exc}\n")
        return type(exc).exit_status


if __name__ == "__main__":
    raise SystemExit(main())
