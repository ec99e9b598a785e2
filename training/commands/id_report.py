"""`lmindexer id-report DIR`: render an HTML report on the IDs that `learn-ids` wrote to DIR."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Render an HTML report on the quality of learned IDs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="DIR", help="A learn-ids output directory.")
    parser.add_argument(
        "--labels",
        default=None,
        help="Label field for AMI and the category plots ('category' or a metadata field). "
        "Default: the one learn-ids used.",
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="Corpus JSONL with the labels. Default: the corpus recorded in DIR/run.json.",
    )
    parser.add_argument("--out", type=Path, default=None, help="HTML file to write. Default: DIR/report.html.")


def run(args: argparse.Namespace) -> int:
    # deferred (measured: matplotlib and scikit-learn take 2-6 s to import): `lmindexer id-report --help` and
    # argument errors import this module to build the parser and must answer at once
    from training.indexing.report import write_report

    out = write_report(args.run_dir, args.out, label_field=args.labels, corpus=args.corpus)
    print(f"wrote {out}")
    return 0
