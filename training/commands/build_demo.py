"""`lmindexer build-demo`: a small working bundle from the vendored Beauty data, end to end."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "Build a small working bundle from the vendored data."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bundles/demo"),
                        help="Bundle directory. Default: bundles/demo.")
    parser.add_argument("--preset", default="quick",
                        help="demo preset: quick (make run's bundle, < 10 min on 2 cores), integration (the "
                             "integration tests' bundle, a few minutes), tiny (~2 min, near-chance answers) or a "
                             "TOML path. Default: quick.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one demo setting (repeatable), e.g. --set num_items=500.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing bundle (once the new one is done).")
    parser.add_argument("--keep-work", action="store_true", help="Keep the intermediate files (IDs, networks).")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")


def run(args: argparse.Namespace) -> int:
    # deferred (measured: torch and transformers take 3-6 s to import): `lmindexer build-demo --help` and argument
    # errors import this module to build the parser and must answer at once
    from training.downstream.demo import build_demo, load_demo_config
    from training.downstream.export import parity_summary

    config = load_demo_config(args.preset, args.overrides)
    started = time.perf_counter()
    manifest = build_demo(args.out, config, overwrite=args.overwrite, keep_work=args.keep_work,
                          progress=not args.no_progress)
    ids = manifest.semantic_ids
    print(f"bundle {args.out}: {manifest.num_documents} documents, models {', '.join(manifest.models)}, "
          f"L={ids.num_levels} K={list(ids.codebook_size_per_level)} counter {ids.counter_size}, "
          f"IDs from {manifest.training_config['ids']['method']}; {time.perf_counter() - started:.0f} s")
    for line in parity_summary(manifest):
        print(f"  {line}")
    return 0
