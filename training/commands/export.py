"""`lmindexer export`: write a serving bundle (docs/bundle.md) from fine-tuned models.

The bundle holds the indexer (the LMIndexer network of the IDs, or --indexer, or else the retriever),
the retriever and/or the item-token recommender, the trie and documents (with a recommender: its
items and the IDs it was trained with; else the retriever task's corpus with its final IDs, cold-start
documents indexed as the service would), and manifest.json with the evaluation figures found in each
model's eval/metrics.json (a recommender without one is evaluated on validation first: its default
ranking mode and hybrid weight are chosen there). ONNX parity is checked on --parity-inputs inputs per
model; a bundle that fails it is not written. The indexer's int8 encoder (for the service's
/index-documents) is written too unless --no-indexer-int8, when its greedy codes agree with the fp32
encoder's on at least --indexer-int8-min-agreement of the indexer's parity inputs.

The documents' text vectors (the bundle's item vectors: the recommender's item tokens, the retriever's
hybrid search) are the recommender's, else the ID source's encoder's (as the recommender would have
them). The retriever's search modes (default mode, hybrid weight) come from its eval/metrics.json,
evaluated on its validation split first when that holds no hybrid evaluation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from training.errors import UserInputError

HELP = "Export a serving bundle (ONNX graphs, trie, documents)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retriever", type=Path, default=None, help="A `lmindexer finetune` output (retrieval).")
    parser.add_argument("--recommender", type=Path, default=None,
                        help="A `lmindexer finetune --task recommendation` output (the item-token recommender); "
                             "its items are the bundle's documents.")
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
    from training.downstream.experiment import evaluate_task, final_ids, load_finetuned, load_task, search_settings
    from training.downstream.export import (
        BundleModel,
        DocumentVectors,
        export_bundle,
        load_recommender,
        parity_summary,
    )
    from training.downstream.finetune import load_indexer_network
    from training.downstream.tasks import load_id_source
    from training.encoder import load_tokenizer
    from training.indexing.network import SemanticIdNetwork
    from training.recommendation.items import text_vectors

    if args.retriever is None and args.recommender is None:
        raise UserInputError("give --retriever and/or --recommender")
    rng = random.Random(0)
    models = {}
    evaluation = {}
    recommender = None
    retriever = load_finetuned(args.retriever) if args.retriever is not None else None
    if args.recommender is not None:
        # The recommender's catalogue is the bundle's documents, with the IDs it was trained with.
        documents, ids, recommender, metrics, rec_record = load_recommender(args.recommender, args.parity_inputs)
        evaluation["recommender"] = metrics
        source = load_id_source(rec_record["ids"])
        if retriever is not None and str(load_id_source(retriever[0]["ids"]).directory) != str(source.directory):
            raise UserInputError("the retriever and the recommender were trained on different ID tables")
        counter_size = int(ids[:, -1].max()) + 1
        counter_size = max(counter_size, recommender.model.codebook_sizes[-1])
    else:
        assert retriever is not None
        record, config, network = retriever
        source = load_id_source(record["ids"])
        task = load_task(record["dataset"], record.get("data_dir"), config)
        documents, ids, _, _ = final_ids(task, source, set(record["cold_documents"]), network.config)
        counter_size = network.config.counter_size
    texts = [d.text for d in documents]

    def sample(pool: list[str]) -> list[str]:
        pool = pool or texts
        return rng.sample(pool, min(args.parity_inputs, len(pool)))

    item_vectors = None
    if retriever is not None:
        record, config, network = retriever
        task = load_task(record["dataset"], record.get("data_dir"), config)
        queries = [t for eval_set in task.eval_sets.values() for t in eval_set.texts]
        metrics_file = args.retriever / "eval" / "metrics.json"
        metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
        if search_settings(metrics) is None and task.kind == "retrieval" and "valid" in task.eval_sets:
            print(f"{args.retriever}: no hybrid evaluation in eval/metrics.json; evaluating on validation to choose "
                  "the search mode and hybrid weight", file=sys.stderr)
            metrics = {**metrics, **evaluate_task(task, args.retriever, splits=("valid",), progress=False)}
            metrics_file.write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
        if metrics:
            evaluation["retriever"] = metrics
        models["retriever"] = BundleModel(network, sample(queries), config.max_input_length,
                                          beam_size=config.beam_size, search=search_settings(metrics))
        if recommender is None:  # the documents' text vectors, as the ID source's encoder makes them
            vectors, made_by = text_vectors(texts, source)
            item_vectors = DocumentVectors(vectors, encoder=str(made_by["encoder"]),
                                           max_length=int(made_by["max_length"]), description=str(made_by["encoder"]))
    if args.indexer is not None:
        indexer = SemanticIdNetwork.load(args.indexer, counter_size=counter_size).eval()
    elif source.network_dir is not None:
        indexer = load_indexer_network(source.network_dir, counter_size)
    elif retriever is not None:
        indexer = retriever[2]
    else:
        raise UserInputError(f"the IDs of {source.directory} ({source.method}) have no indexer network: give "
                             "--indexer (a saved network mapping a document's text to its ID)")
    document_length = args.max_document_length or source.document_length
    # The indexer's parity check decodes its documents with the retriever's beam, else the default 20.
    beam_size = retriever[1].beam_size if retriever is not None else 20
    models["indexer"] = BundleModel(indexer, sample(texts), document_length, beam_size=beam_size)
    tokenizer = load_tokenizer(indexer.config.encoder)
    training_config = {"ids": str(source.directory), "method": source.method}
    if retriever is not None:
        training_config["retriever"] = retriever[0]["config"]
    if args.recommender is not None:
        training_config["recommender"] = rec_record["settings"]
    manifest = export_bundle(args.out, models, documents, ids, tokenizer, encoder=indexer.config.encoder,
                             evaluation=evaluation, training_config=training_config, overwrite=args.overwrite,
                             indexer_int8=args.indexer_int8, indexer_int8_min_agreement=args.indexer_int8_min_agreement,
                             recommender=recommender, item_vectors=item_vectors)
    print(f"bundle {args.out}: {manifest.num_documents} documents, models {', '.join(manifest.models)}")
    for line in parity_summary(manifest):
        print(f"  {line}")
    return 0
