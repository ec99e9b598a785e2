"""`lmindexer learn-ids`: learn semantic IDs for a corpus with LMIndexer, rq-VAE, HC or RK-means.

Writes into --out DIR (created complete, or not at all):
    ids.jsonl        one {"doc_id": ..., "semantic_id": [c1, ..., cL, counter]} a line
    metrics.json     per-level diagnostics (perplexity, usage, AMI, collisions), wall times
    run.json         method, preset, settings, corpus path, label field, L, K, counter size
    model.safetensors, config.json (and whatever else the method saves): the checkpoint
    item_vectors.npy (lmindexer) every document's text vector from the network's encoder, (N, D) float32 in
                     ids.jsonl order, described under "item_vectors" in lmindexer.json; the recommender
                     reads it instead of encoding the catalogue again (training.indexing.item_vectors)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.indexing.learning import METHODS, learn_ids

HELP = "Learn semantic IDs for a corpus (lmindexer, rqvae, hc, rkmeans)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, required=True,
                        help="Corpus JSONL (doc_id, text, optional category; .gz accepted).")
    parser.add_argument("--method", choices=sorted(METHODS), default="lmindexer", help="Indexing method.")
    parser.add_argument("--preset", default="quick",
                        help="Preset name (quick, paper) read from training/configs/<method>-<preset>.toml, "
                             "or a path to a TOML file. Default: quick.")
    parser.add_argument("--out", type=Path, required=True, help="Output directory.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one setting of the preset (repeatable), e.g. --set codebook_size=128.")
    parser.add_argument("--labels", default=None,
                        help="Field whose values AMI is measured against: 'category' (the default when the "
                             "corpus has categories) or a metadata field of the corpus lines.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing non-empty --out directory (only once the new one is complete).")


def run(args: argparse.Namespace) -> int:
    record = learn_ids(corpus=args.corpus, method=args.method, out_dir=args.out, preset=args.preset,
                       overrides=args.overrides, label_field=args.labels, overwrite=args.overwrite)
    with open(Path(args.out) / record["files"]["metrics"], encoding="utf-8") as handle:
        metrics = json.load(handle)
    print(f"{record['num_documents']} documents -> {args.out}/ids.jsonl  "
          f"(L={record['num_levels']} learned levels, K={record['codebook_sizes']}, "
          f"counter size {record['counter_size']})")
    for level in metrics["levels"]:
        ami = level.get("ami")
        ami_text = f"  AMI {ami:.3f}" if isinstance(ami, float) else ""
        print(f"  level {level['level']}: {level['codes_used']}/{level['codebook_size']} codes used, "
              f"perplexity {level['perplexity']:.1f}, {level['prefixes']} prefixes{ami_text}")
    collisions = metrics["collisions"]
    print(f"  collisions: {collisions['collision_rate']:.1%} of documents share their learned code; "
          f"largest group {collisions['largest_collision_group']}; {metrics['wall_seconds']['total']:.1f} s")
    return 0
