"""`lmindexer baseline`: run a retrieval baseline on Cranfield or any SMART collection, or a
recommendation one on Beauty.

    lmindexer baseline --dataset cranfield --method bm25  --split test --out runs/cranfield
    lmindexer baseline --dataset cranfield --method dense --split all  --out runs/cranfield
    lmindexer baseline --smart data/cisi --method bm25 --split test --out runs/cisi
    lmindexer baseline --dataset beauty --method sasrec --out runs/beauty --set epochs=50

Retrieval (`training.baselines.retrieval`) writes `{method}-{split}.trec`, `qrels-{split}.trec` and
`{method}-{split}.metrics.json` (which names the collection) into --out; `--smart DIR` reads any
SMART collection's folder (`training.data.smart.read_smart_collection`) and splits its queries with
`collection_query_split`. Beauty hands over to
`training.baselines.recommendation.run_recommendation_baseline` with the --set options.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

from training.errors import ConfigError

HELP = "Run a retrieval or recommendation baseline."

RETRIEVAL = ("bm25", "dense")
RECOMMENDATION = ("popularity", "sasrec")
DATASET_METHODS = {"cranfield": RETRIEVAL, "beauty": RECOMMENDATION}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    collection = parser.add_mutually_exclusive_group(required=True)
    collection.add_argument("--dataset", choices=sorted(DATASET_METHODS),
                            help="cranfield (retrieval: bm25, dense) or beauty (recommendation: popularity, sasrec).")
    collection.add_argument("--smart", type=Path, default=None, metavar="DIR",
                            help="Retrieval (bm25, dense) on any SMART collection's folder: Cranfield's or CISI's "
                                 "layout (*.all*, *.qry, *qrel* or *.REL).")
    parser.add_argument("--method", required=True, choices=[*RETRIEVAL, *RECOMMENDATION], help="The baseline.")
    parser.add_argument("--out", required=True, type=Path, help="Output folder (created if needed).")
    retrieval = parser.add_argument_group("retrieval options (cranfield, --smart)")
    retrieval.add_argument("--split", default="all", choices=["all", "train", "dev", "test"],
                           help="Queries to run: all (Cranfield's 225; with --smart those with a relevant "
                                "judgment), or a part of the seeded split. Default: all.")
    retrieval.add_argument("--data-dir", type=Path, default=None,
                           help="Folder with cran.all.1400, cran.qry, cranqrel. Default: the vendored data/cranfield.")
    retrieval.add_argument("--top-k", type=int, default=100, help="Documents per query in the run. Default: 100.")
    retrieval.add_argument("--no-title", action="store_true",
                           help="Document text = the abstract only (default: title + abstract).")
    retrieval.add_argument("--stemmer", default=None,
                           help="BM25 only: a PyStemmer language (e.g. english). Default: no stemming.")
    recommendation = parser.add_argument_group("beauty options")
    recommendation.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                                help="A setting of the recommendation baseline (repeatable), e.g. max_epochs=50.")


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; a value is read as a TOML literal (number, bool, list) or else a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        options[key.strip()] = value
    return options


def run(args: argparse.Namespace) -> int:
    dataset = args.dataset or "cranfield"  # --smart: a retrieval collection, the options of cranfield
    if args.method not in DATASET_METHODS[dataset]:
        raise ConfigError(f"method {args.method!r} does not apply to {args.dataset or 'a SMART collection'}: "
                          f"use one of {', '.join(DATASET_METHODS[dataset])}")
    if args.smart is not None and args.data_dir is not None:
        raise ConfigError("--data-dir goes with --dataset cranfield; --smart names the collection's folder itself")
    if args.dataset == "beauty":
        # Deferred (measured: torch takes 3-6 s to import): a Cranfield run, `lmindexer baseline --help` and
        # argument errors never need the recommendation baselines.
        from training.baselines.recommendation import run_recommendation_baseline

        report = run_recommendation_baseline(args.method, args.out, **_parse_options(args.options))
        print(json.dumps(report.get("metrics", {}), indent=2))
        return 0
    if args.options:
        raise ConfigError("--set applies to the beauty baselines only")
    if args.stemmer is not None and args.method != "bm25":
        raise ConfigError("--stemmer applies to bm25 only")
    if args.top_k < 1:
        raise ConfigError("--top-k must be at least 1")
    # Deferred (measured: scikit-learn and scipy via the metrics, 1-4 s): the argument checks above come first.
    from training.baselines.retrieval import DEFAULT_CRANFIELD_DIR, run_retrieval_baseline

    report = run_retrieval_baseline(args.method, args.out, split=args.split,
                                    data_dir=args.smart or args.data_dir or DEFAULT_CRANFIELD_DIR, top_k=args.top_k,
                                    include_title=not args.no_title, stemmer=args.stemmer, smart=args.smart is not None)
    print(f"{report['dataset']} {args.split} ({report['num_queries']} queries), {args.method}:")
    for name, value in report["metrics"].items():
        print(f"  {name:<10} {value:.4f}")
    print(f"wrote {args.out / report['files']['run']}, {args.out / report['files']['qrels']} and "
          f"{args.out / (args.method + '-' + args.split + '.metrics.json')}")
    return 0
