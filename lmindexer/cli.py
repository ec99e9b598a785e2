"""lmindexer COMMAND [options]: learn semantic IDs, fine-tune, evaluate, export, serve.

Each command lives in its own module, which defines:
    HELP: str                                   one line for `lmindexer --help`
    add_arguments(parser: ArgumentParser) -> None
    run(args: Namespace) -> int                 the exit status

Modules are imported only when their command runs, so heavy imports (torch) stay out of the
service's commands. Expected failures (a bad input file, a bad option) raise an exception whose
class has an integer `exit_status` attribute (training's `UserInputError` family, the service's
`BundleError`): its message is printed to stderr, without a traceback, and the command exits
with that status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# name -> (module, one-line summary). The summary is repeated here so `--help` imports nothing.
COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate-run": ("training.commands.evaluate_run", "Score a TREC run file against TREC qrels."),
    "baseline": ("training.commands.baseline", "Run a retrieval or recommendation baseline."),
    "learn-ids": ("training.commands.learn_ids", "Learn semantic IDs for a corpus (lmindexer, rqvae, hc, rkmeans)."),
    "id-report": ("training.commands.id_report", "Render an HTML report on the quality of learned IDs."),
    "finetune": ("training.commands.finetune", "Fine-tune the indexer for retrieval or recommendation."),
    "evaluate": ("training.commands.evaluate", "Evaluate a fine-tuned model with constrained beam search."),
    "export": ("training.commands.export", "Export a serving bundle (ONNX graphs, trie, documents)."),
    "build-demo": ("training.commands.build_demo", "Build a small working bundle from the vendored data."),
    "serve": ("service.cli", "Serve a bundle over HTTP (POST /search, /recommend, /index-documents)."),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmindexer",
        description="Language models as semantic indexers: learn semantic IDs, fine-tune, serve.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `lmindexer COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--log-level", default=os.environ.get("LMINDEXER_LOG_LEVEL", "INFO"),
                        help="Logging level (DEBUG, INFO, WARNING). Default: INFO.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    top, rest = parser.parse_known_args(argv)
    if top.command is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    logging.basicConfig(
        level=getattr(logging, str(top.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module_name, summary = COMMANDS[top.command]
    module = importlib.import_module(module_name)
    command_parser = argparse.ArgumentParser(prog=f"lmindexer {top.command}", description=summary)
    module.add_arguments(command_parser)
    args = command_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        exit_status = getattr(type(exc), "exit_status", None)
        if not isinstance(exit_status, int):
            raise
        print(f"lmindexer {top.command}: error: {exc}", file=sys.stderr)
        return exit_status


if __name__ == "__main__":
    raise SystemExit(main())
