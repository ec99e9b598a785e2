"""`lmindexer export`: write a serving bundle (docs/bundle.md) from fine-tuned models.

The bundle holds the indexer (the LMIndexer network of --ids, or --indexer, or else the retriever),
the retriever and/or the recommender, the trie and documents of the task's corpus with their final
IDs (cold-start documents indexed as the service would), and manifest.json with the evaluation
figures found in each model's eval/metrics.json. ONNX parity is checked on --parity-inputs inputs per
model; a bundle that fails it is not written. The indexer's int8 encoder (for the service's
/index-documents) is written too unless --no-indexer-int8, when its greedy codes agree with the fp32
encoder's on at least --indexer-int8-min-agreement of the indexer's parity inputs.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from bundle import HistorySpec
from training.errors import UserInputError

HELP = "Export a serving bundle (ONNX graphs, trie, documents)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retriever", type=Path, default=None, help="A `lmindexer finetune` output (retrieval).")
    parser.add_argument("--recommender", type=Path, default=None,
                        help="A `lmindexer finetune` output (recommendation).")
    parser.add_argument("--indexer", type=Path, default=None,
                        help="A saved network for document -> ID (default: the network of the IDs' learn-ids "
                             "output, else the retriever).")
    parser.add_argument("--out", type=Path, required=True, help="Bundle directory.")
    parser.add_argument("--parity-inputs", type=int, default=100, help="Inputs of the parity check per model.")
    parser.add_argument("--max-document-length", type=int, default=None,
                        help="Tokens of a document (indexer). Default: what learn-ids used, else 128.")
    parser.add_argument("--indexer-int8", action=argparse.BooleanOptionalAction, default=True,
                        help="Also write indexer/encoder.int8.onnx (int8 weights, about twice the indexing "
                             "throughput on CPU). Default: on.")
    parser.add_argument("--indexer-int8-min-agreement", type=float, default=0.9,
                        help="Least fraction of the indexer's parity inputs whose learned prefix must be the "
                             "same with the int8 encoder as with the fp32 one, else it is not written. Default 0.9.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing bundle (once the new one is done).")


def run(args: argparse.Namespace) -> int:
    # deferred (measured: torch and transformers take 3-6 s to import): `lmindexer export --help` and argument
    # errors import this module to build the parser and must answer at once
    from training.downstream.experiment import final_ids, load_finetuned, load_task
    from training.downstream.export import BundleModel, export_bundle, parity_summary
    from training.downstream.finetune import load_indexer_network
    from training.downstream.tasks import HISTORY_SEPARATOR, load_id_source
    from training.encoder import load_tokenizer
    from training.indexing.network import SemanticIdNetwork

    given = {name: path for name, path in (("retriever", args.retriever), ("recommender", args.recommender)) if path}
    if not given:
        raise UserInputError("give --retriever and/or --recommender")
    loaded = {name: load_finetuned(path) for name, path in given.items()}
    records = {name: item[0] for name, item in loaded.items()}
    if len({r["ids"] for r in records.values()}) != 1:
        raise UserInputError("the models were fine-tuned on different ID tables")
    first = next(iter(records.values()))
    source = load_id_source(first["ids"])
    cold = set().union(*(set(r["cold_documents"]) for r in records.values()))
    # Documents: the corpus of the IDs (every task of a bundle indexes the same documents).
    record, first_config, network = next(iter(loaded.values()))
    task = load_task(record["dataset"], record.get("data_dir"), first_config)
    documents, ids, _, _ = final_ids(task, source, cold, network.config)
    rng = random.Random(0)
    texts = [d.text for d in documents]

    def sample(pool: list[str]) -> list[str]:
        pool = pool or texts
        return rng.sample(pool, min(args.parity_inputs, len(pool)))

    models = {}
    evaluation = {}
    counter_size = max(item[2].config.counter_size for item in loaded.values())
    for model_name, (model_record, model_config, model_network) in loaded.items():
        model_task = load_task(model_record["dataset"], model_record.get("data_dir"), model_config)
        queries = [t for eval_set in model_task.eval_sets.values() for t in eval_set.texts]
        history = (HistorySpec(max_items=model_config.max_history, separator=HISTORY_SEPARATOR,
                                   order="most_recent_first")
                   if model_name == "recommender" else None)
        models[model_name] = BundleModel(model_network, sample(queries), model_config.max_input_length,
                                         beam_size=model_config.beam_size, history=history)
        metrics = given[model_name] / "eval" / "metrics.json"
        if metrics.is_file():
            evaluation[model_name] = json.loads(metrics.read_text(encoding="utf-8"))
    if args.indexer is not None:
        indexer = SemanticIdNetwork.load(args.indexer, counter_size=counter_size).eval()
    elif source.network_dir is not None:
        indexer = load_indexer_network(source.network_dir, counter_size)
    else:
        indexer = loaded["retriever"][2] if "retriever" in loaded else loaded["recommender"][2]
    document_length = args.max_document_length or source.document_length
    models["indexer"] = BundleModel(indexer, sample(texts), document_length, beam_size=first_config.beam_size)
    tokenizer = load_tokenizer(network.config.encoder)
    training_config = {"ids": str(source.directory), "method": source.method,
                       **{n: r["config"] for n, r in records.items()}}
    manifest = export_bundle(args.out, models, documents, ids, tokenizer, encoder=network.config.encoder,
                             evaluation=evaluation, training_config=training_config, overwrite=args.overwrite,
                             indexer_int8=args.indexer_int8, indexer_int8_min_agreement=args.indexer_int8_min_agreement)
    print(f"bundle {args.out}: {manifest.num_documents} documents, models {', '.join(manifest.models)}")
    for line in parity_summary(manifest):
        print(f"  {line}")
    return 0
