"""`lmindexer build-demo`: a working bundle from the vendored Beauty data, end to end, in resumable stages."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "Build a working bundle from the vendored Beauty data (cached, resumable stages)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bundles/demo"),
                        help="Bundle directory. Default: bundles/demo. The work directory is OUT.work beside it "
                             "(kept until the export succeeds, so an interrupted build continues where it stopped); "
                             "held-out items (holdout_items) go to OUT.holdout.jsonl.")
    parser.add_argument("--preset", default="quick",
                        help="demo preset: quick (make run's bundle: the whole Beauty catalogue, 12,101 items), "
                             "integration (the integration tests' bundle, 600 items, a few minutes), tiny (150 items, "
                             "~2 min, near-chance answers) or a TOML path. Default: quick.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one demo setting (repeatable), e.g. --set num_items=500.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing bundle (once the new one is done).")
    parser.add_argument("--keep-work", action="store_true",
                        help="Keep the work directory (IDs, networks, stage markers) after a successful build; a "
                             "later build with --overwrite then redoes only the stages whose settings changed.")
    parser.add_argument("--fresh", action="store_true",
                        help="Remove the work directory first: every stage starts from scratch.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")


def run(args: argparse.Namespace) -> int:
    # deferred (measured: torch and transformers take 3-6 s to import): `lmindexer build-demo --help` and argument
    # errors import this module to build the parser and must answer at once
    from training.downstream.demo import build_demo, load_demo_config
    from training.downstream.export import parity_summary

    config = load_demo_config(args.preset, args.overrides)
    started = time.perf_counter()
    manifest = build_demo(args.out, config, overwrite=args.overwrite, keep_work=args.keep_work,
                          progress=not args.no_progress, fresh=args.fresh)
    ids = manifest.semantic_ids
    print(f"bundle {args.out}: {manifest.num_documents} documents, models {', '.join(manifest.models)}, "
          f"L={ids.num_levels} K={list(ids.codebook_size_per_level)} counter {ids.counter_size}, "
          f"IDs from {manifest.training_config['ids']['method']}; {time.perf_counter() - started:.0f} s")
    for line in parity_summary(manifest):
        print(f"  {line}")
    return 0
