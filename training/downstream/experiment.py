"""One downstream experiment end to end: data -> fine-tune -> cold-start indexing -> evaluation.

A `Task` is the dataset side (documents, training pairs, evaluation queries and qrels) of
retrieval (Cranfield, any SMART collection by its folder, or any corpus with queries;
recommendation is `training.recommendation`).
`finetune_task` fine-tunes a network for an ID source and writes DIR/network + DIR/finetune.json;
`evaluate_task` loads it, gives the cold-start documents their IDs (the indexer's greedy codes +
next free counter for LMIndexer IDs; methods without an indexer network keep the IDs their
method gave them, which the run records), decodes every evaluation query with constrained beam
search over the trie of all documents, writes TREC runs and returns the metrics for all queries,
and separately for the queries about warm and about cold documents.

Row order of the trie and of the ID table written here: warm documents first (in ID-table
order), then the cold ones, so cold documents can be inserted after the trie of warm IDs exists.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from bundle import (
    DenseIndex,
    OnnxRunner,
    SearchCandidates,
    SearchSettings,
    TextTokenizer,
    rank_candidates,
    search_candidates,
)
from training.config import build_config, config_to_dict
from training.data.corpus import Document, write_corpus_jsonl
from training.data.smart import (
    CRANFIELD_SPLIT_RULE,
    SmartCollection,
    collection_query_split,
    cranfield_query_split,
    read_cranfield,
    read_smart_collection,
)
from training.data.trec import write_run
from training.downstream.cold_start import index_cold_documents
from training.downstream.evaluate import (
    Decoded,
    TorchModel,
    beam_search,
    decoded_run,
    per_query_latency,
    restrict_qrels,
    score_run,
)
from training.downstream.finetune import FinetuneConfig, build_network, finalize_checkpoint, load_indexer_network, train
from training.downstream.tasks import (
    Example,
    IdSource,
    choose_cold_documents,
    load_id_source,
    retrieval_examples,
)
from training.encoder import load_tokenizer, resolve_encoder_path
from training.errors import ConfigError
from training.indexing.id_table import read_ids_jsonl, write_ids_jsonl
from training.indexing.learning import learn_ids
from training.indexing.network import SemanticIdNetwork
from training.progress import library_bars
from training.recommendation.items import text_vectors
from trie import SemanticIdTrie

logger = logging.getLogger(__name__)

RETRIEVAL_METRICS = ("ndcg@10", "recall@10", "mrr@10")
FINETUNE_RECORD = "finetune.json"
RETIRED_SETTINGS = frozenset({"max_history", "train_examples"})  # of the history-text recommender (issue 17)


@dataclass(frozen=True)
class EvalSet:
    """Evaluation queries of one split: ids, input texts and graded qrels."""

    query_ids: list[str]
    texts: list[str]
    qrels: dict[str, dict[str, int]]


@dataclass
class Task:
    """The data side of a downstream task (see the module docstring)."""

    kind: Literal["retrieval"]
    name: str
    documents: list[Document]
    eval_sets: dict[str, EvalSet]
    # retrieval: training queries (query_id -> text) and qrels; titles for title-as-query pairs
    train_queries: dict[str, str] = field(default_factory=dict)
    train_qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    # The `load_task` name that rebuilds the task from its folder ("cranfield", "smart"); None: built in
    # code (the demo's). Not compared: `smart_task` on Cranfield's folder is the Cranfield task.
    loader: str | None = field(default=None, compare=False)
    # How the queries were split, in words (`training.data.smart.collection_query_split`), for records.
    split_rule: str | None = field(default=None, compare=False)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The task's reported metrics."""
        return RETRIEVAL_METRICS

    def examples(self, id_of: Mapping[str, tuple[int, ...]], cold: set[str], config: FinetuneConfig) -> list[Example]:
        """Training pairs (cold documents excluded), subsampled to config.max_train_examples."""
        texts = {d.doc_id: d.text for d in self.documents}
        doc_as_query = {"on": True, "off": False}.get(config.doc_as_query,
                                                     len(self.train_queries) < len(self.documents))
        examples = retrieval_examples(self.train_queries, self.train_qrels, texts, id_of, doc_as_query,
                                      titles=self.titles, cold=cold, span_queries=config.doc_span_queries,
                                      span_words=config.doc_span_words, seed=config.seed,
                                      sentence_queries=config.doc_sentence_queries,
                                      keyphrase_queries=config.doc_keyphrase_queries,
                                      keyphrase_terms=config.keyphrase_terms,
                                      pseudo_query_words=config.pseudo_query_words,
                                      query_repeats=config.train_query_repeats)
        if config.max_train_examples and len(examples) > config.max_train_examples:
            examples = random.Random(config.seed).sample(examples, config.max_train_examples)
        return examples


def cranfield_task(directory: str | Path) -> Task:
    """Cranfield retrieval with the foundation's fixed train/dev/test query split. The two empty
    records (471, 995) get their doc_id as text so every document can hold an ID."""
    collection = read_cranfield(directory)
    split = cranfield_query_split([q.query_id for q in collection.queries])
    return _retrieval_task(collection, split, CRANFIELD_SPLIT_RULE, loader="cranfield")


def smart_task(directory: str | Path) -> Task:
    """Retrieval on any SMART collection by its folder (`training.data.smart.read_smart_collection`),
    split by `collection_query_split`: Cranfield's folder gives exactly `cranfield_task`'s task (its
    fixed split over all 225 queries), any other collection a seeded split of its queries with a
    relevant judgment (`smart_query_split`). Empty documents get their doc_id as text, as in Cranfield."""
    collection = read_smart_collection(directory)
    split, rule = collection_query_split(collection)
    logger.info("%s (%s): %d documents, %d queries; %s", collection.name, directory, len(collection.documents),
                len(collection.queries), rule)
    return _retrieval_task(collection, split, rule, loader="smart")


def _retrieval_task(collection: SmartCollection, split: Mapping[str, Sequence[str]], rule: str, loader: str) -> Task:
    documents = [d if d.text.strip() else Document(d.doc_id, f"document {d.doc_id}", d.category, d.metadata)
                 for d in collection.documents]
    queries = {q.query_id: q.text for q in collection.queries}

    def eval_set(ids: Sequence[str]) -> EvalSet:
        # Every query of the split counts (one without a relevant document scores 0, as in trec_eval -c).
        return EvalSet(query_ids=list(ids), texts=[queries[q] for q in ids],
                       qrels={q: dict(collection.qrels.get(q, {})) for q in ids})

    return Task(kind="retrieval", name=collection.name, documents=documents,
                eval_sets={"valid": eval_set(split["dev"]), "test": eval_set(split["test"])},
                train_queries={q: queries[q] for q in split["train"]},
                train_qrels={q: dict(collection.qrels.get(q, {})) for q in split["train"]},
                titles={d.doc_id: str(d.metadata.get("title", "")) for d in documents}, loader=loader,
                split_rule=rule)


DATA_DIR = Path(__file__).resolve().parents[2] / "data"
DATASETS = ("cranfield",)


def load_task(name: str, data_dir: str | Path | None = None, config: FinetuneConfig | None = None) -> Task:
    """A task by dataset name: "cranfield" (retrieval; `data_dir` holds the SMART files, default the
    vendored copy under data/) or "smart" (retrieval on the SMART collection in `data_dir`, which it
    needs: `smart_task`). Beauty recommendation is the item-token recommender
    (`lmindexer finetune --task recommendation`, `training.recommendation`)."""
    if name == "cranfield":
        return cranfield_task(Path(data_dir) if data_dir is not None else DATA_DIR / "cranfield")
    if name == "smart":
        if data_dir is None:
            raise ConfigError("the smart dataset needs the collection's folder (lmindexer finetune --smart DIR)")
        return smart_task(data_dir)
    if name == "beauty":
        raise ConfigError("Beauty recommendation is the item-token recommender: lmindexer finetune --task "
                          "recommendation (the history-text recommender fine-tuned with --dataset beauty is gone)")
    raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, smart (with its folder)")


def finetune_task(task: Task, source: IdSource, config: FinetuneConfig, out_dir: Path,
                  progress: bool = True, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune a network on `task` for the IDs of `source`; writes out_dir/network and finetune.json.

    finetune.json's `dataset` (the `load_task` name: "cranfield", "smart"; else the task's name) and
    `data_dir` (the folder it was read from, `data_dir`) are what `lmindexer evaluate` and `export`
    rebuild the task from; `collection` names the collection ("cranfield", "cisi").
    """
    library_bars(progress)
    out_dir = Path(out_dir)
    id_of = source.id_of()
    doc_ids = [d.doc_id for d in task.documents if d.doc_id in id_of]
    if len(doc_ids) < len(task.documents):
        logger.warning("%d of %d documents have no semantic ID in %s and are ignored",
                       len(task.documents) - len(doc_ids), len(task.documents), source.directory)
    cold = choose_cold_documents(doc_ids, config.cold_start_fraction, config.seed)
    examples = task.examples(id_of, cold, config)
    logger.info("%s: %d training pairs, %d documents (%d held out for cold start)", task.name, len(examples),
                len(doc_ids), len(cold))
    network = build_network(source, config)
    history = train(network, examples, config, out_dir, progress=progress)
    network.save(out_dir / "network")
    finalize_checkpoint(out_dir)
    record = {
        "task": task.kind, "dataset": task.loader or task.name, "collection": task.name,
        "data_dir": str(data_dir) if data_dir else None, "query_split": task.split_rule,
        "ids": str(Path(source.directory).resolve()),
        "method": source.method, "cold_documents": sorted(cold), "config": config_to_dict(config),
        "training": {k: v for k, v in history.items() if k != "config"},
        "initialised_from": "indexer network" if source.network_dir is not None else "pretrained encoder",
    }
    (out_dir / FINETUNE_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def load_finetuned(out_dir: Path) -> tuple[dict[str, Any], FinetuneConfig, Any]:
    """(finetune.json, its config, the fine-tuned network) of a finetune output directory."""
    out_dir = Path(out_dir)
    path = out_dir / FINETUNE_RECORD
    if not path.is_file():
        raise ConfigError(f"{out_dir} is not a finetune output (no {FINETUNE_RECORD})")
    record = json.loads(path.read_text(encoding="utf-8"))
    # records written before issue 17 also hold the removed history-text recommender's settings
    settings = {k: v for k, v in record["config"].items() if k not in RETIRED_SETTINGS}
    config = build_config(FinetuneConfig, settings, source=str(path))
    network = SemanticIdNetwork.load(out_dir / "network").eval()
    return record, config, network


def final_ids(task: Task, source: IdSource, cold: set[str], network_config: Any,
              progress: bool = False) -> tuple[list[Document], np.ndarray, Any, dict[str, Any]]:
    """Documents in trie row order (warm, then cold), their IDs, the trie and a cold-start note.

    Cold documents get greedy codes from the indexer network + the next free counter when the IDs
    come from LMIndexer; otherwise they keep their method's IDs.
    """
    id_of = source.id_of()
    sizes = list(network_config.codebook_sizes)
    known = [d for d in task.documents if d.doc_id in id_of]
    warm = [d for d in known if d.doc_id not in cold]
    cold_docs = [d for d in known if d.doc_id in cold]
    warm_ids = np.asarray([id_of[d.doc_id] for d in warm], dtype=np.int64).reshape(len(warm), len(sizes))
    note: dict[str, Any] = {"cold_documents": len(cold_docs)}
    if cold_docs and source.network_dir is not None:
        indexer = load_indexer_network(source.network_dir)
        model = TorchModel(indexer, load_tokenizer(indexer.config.encoder), max_length=source.document_length)
        trie, cold_ids = index_cold_documents(model, [d.text for d in cold_docs], warm_ids,
                                              np.arange(len(warm)), np.arange(len(warm), len(known)), sizes)
        original = np.asarray([id_of[d.doc_id] for d in cold_docs])
        note["assignment"] = "indexer greedy codes + next free counter"
        note["same_learned_codes_as_indexing"] = float((cold_ids[:, :-1] == original[:, :-1]).all(1).mean())
        ids = np.concatenate([warm_ids, cold_ids])
        trie = trie.compacted() if hasattr(trie, "compacted") else trie
    else:
        ids = np.asarray([id_of[d.doc_id] for d in warm + cold_docs], dtype=np.int64).reshape(len(known), len(sizes))
        trie = SemanticIdTrie.build(ids, codebook_sizes=sizes)
        note["assignment"] = "the ID method's own IDs (no indexer network)" if cold_docs else "none"
    return warm + cold_docs, ids, trie, note


HYBRID_RULE = ("(1 - w) * cosine(query, document text vectors) + w * p, p = exp(summed log-prob) of the document's "
               "ID in the beam (0 outside it), over the beam's candidates and the dense top-N (bundle.retrieval)")


def evaluate_task(task: Task, out_dir: Path, splits: Sequence[str] = ("valid", "test"), beam_size: int | None = None,
                  max_queries: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate a finetune output on `splits`; writes out_dir/eval/<split>.run and metrics.json.

    Retrieval tasks are also evaluated in the hybrid search mode (`FinetuneConfig.eval_hybrid`;
    `bundle.retrieval`, the rule the service ranks with): the beam's complete IDs (beam `beam_size`) and the
    `dense_candidates` documents of highest cosine between the query's and the documents' text vectors (the
    ID source's encoder, `training.recommendation.items.text_vectors`, as the bundle's item vectors). The
    validation split, evaluated first whenever the task has one, chooses the weight w among
    `hybrid_weights` (best NDCG@10, ties: the smaller w) and the default mode (hybrid unless its NDCG@10 is
    below the generative one: on a tie, e.g. titles the retriever was trained on and finds anyway, hybrid
    also reads the dense evidence the split could not weigh); test is scored with that w. metrics.json then
    holds, beside each split's generative figures (`all`, `warm`, `cold`), its `hybrid` and `dense` figures,
    and `hybrid_weight`, `default_mode`, `dense_candidates`, `hybrid_chosen_on` (what the bundle's
    `models.retriever.search` records) and `valid_ndcg@10_by_hybrid_weight`; the hybrid runs are
    <split>-hybrid.run.
    """
    out_dir = Path(out_dir)
    record, config, network = load_finetuned(out_dir)
    source = load_id_source(record["ids"])
    cold = set(record["cold_documents"])
    documents, ids, trie, note = final_ids(task, source, cold, network.config, progress)
    eval_dir = out_dir / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    write_ids_jsonl(eval_dir / "ids.jsonl", [d.doc_id for d in documents], ids)
    model = TorchModel(network, load_tokenizer(network.config.encoder), config.max_input_length)
    beam_size = beam_size or config.beam_size
    limit = max_queries if max_queries is not None else config.eval_max_queries
    results: dict[str, Any] = {"cold_start": note, "beam_size": beam_size, "method": record["method"]}
    doc_ids = [d.doc_id for d in documents]
    hybrid = task.kind == "retrieval" and config.eval_hybrid
    if hybrid and "valid" not in task.eval_sets:
        logger.warning("%s has no validation split to choose the hybrid weight on: hybrid not evaluated", task.name)
        hybrid = False
    dense_index: DenseIndex | None = None
    weight: float | None = None
    if hybrid:
        splits = ("valid", *(s for s in splits if s != "valid"))  # validation chooses the weight test uses
        vectors, encoder = text_vectors([d.text for d in documents], source)
        dense_index = DenseIndex.build(vectors)
        results.update({"hybrid_rule": HYBRID_RULE, "dense_candidates": config.dense_candidates,
                        "text_vectors": encoder})
    for split in splits:
        eval_set = task.eval_sets[split]
        # A query whose judged documents all lack an ID (IDs learned on part of the corpus) can never be
        # answered: it is left out, with a warning, rather than scored 0.
        indexed = set(doc_ids)
        keep = [i for i, q in enumerate(eval_set.query_ids)
                if not eval_set.qrels[q] or any(d in indexed for d in eval_set.qrels[q])]
        if len(keep) < len(eval_set.query_ids):
            logger.warning("%s: %d of %d queries judge only documents without an ID; left out", split,
                           len(eval_set.query_ids) - len(keep), len(eval_set.query_ids))
        query_ids, texts = [eval_set.query_ids[i] for i in keep], [eval_set.texts[i] for i in keep]
        if limit and len(query_ids) > limit:
            chosen = sorted(random.Random(config.seed).sample(range(len(query_ids)), limit))
            query_ids, texts = [query_ids[i] for i in chosen], [texts[i] for i in chosen]
        qrels = {q: eval_set.qrels[q] for q in query_ids}
        # Hybrid reads every complete ID of the beam (its candidates); the generative ranking is their first 10.
        decoded = beam_search(model, texts, trie, beam_size=beam_size, top_k=beam_size if hybrid else 10,
                              batch_size=config.eval_batch_size, progress=progress)
        top10 = Decoded(decoded.semantic_ids[:, :10], decoded.scores[:, :10], decoded.rows[:, :10],
                        np.minimum(decoded.counts, 10), decoded.seconds)
        run = decoded_run(top10, query_ids, doc_ids)
        write_run(eval_dir / f"{split}.run", run, tag=f"lmindexer-{record['method']}")
        warm_qrels = restrict_qrels(qrels, lambda d: d not in cold)
        cold_qrels = restrict_qrels(qrels, lambda d: d in cold)
        results[split] = {
            "all": score_run(run, qrels, task.metrics), "queries": len(qrels),
            "warm": score_run(run, warm_qrels, task.metrics), "warm_queries": len(warm_qrels),
            "cold": score_run(run, cold_qrels, task.metrics), "cold_queries": len(cold_qrels),
            "seconds_per_query": decoded.seconds / max(1, len(texts)),
            "valid_ids": bool(all(trie.row_of(tuple(r)) is not None
                                  for q in range(len(texts)) for r in top10.semantic_ids[q, :top10.counts[q]])),
        }
        if dense_index is not None:
            query_vectors, _ = text_vectors(texts, source)
            beam_rows = np.where(np.arange(decoded.rows.shape[1])[None, :] < decoded.counts[:, None], decoded.rows, -1)
            candidates = search_candidates(beam_rows, decoded.scores, query_vectors, dense_index,
                                           max(config.dense_candidates, 10))
            if split == "valid":
                weight, by_weight = choose_search_weight(candidates, config.hybrid_weights, query_ids, doc_ids, qrels)
                results["valid_ndcg@10_by_hybrid_weight"] = by_weight
            assert weight is not None
            hybrid_run = decoded_run(rank_candidates(candidates, weight, 10), query_ids, doc_ids)
            write_run(eval_dir / f"{split}-hybrid.run", hybrid_run, tag=f"lmindexer-{record['method']}-hybrid")
            dense_run = decoded_run(rank_candidates(candidates, 0.0, 10), query_ids, doc_ids)
            results[split]["hybrid"] = {"all": score_run(hybrid_run, qrels, task.metrics),
                                        "warm": score_run(hybrid_run, warm_qrels, task.metrics),
                                        "cold": score_run(hybrid_run, cold_qrels, task.metrics)}
            results[split]["dense"] = {"all": score_run(dense_run, qrels, task.metrics)}
            if split == "valid":
                mode = default_search_mode(results[split]["all"]["ndcg@10"], results[split]["hybrid"]["all"]["ndcg@10"])
                results.update({"hybrid_weight": weight, "default_mode": mode,
                                "hybrid_chosen_on": f"{task.name} valid split: {len(qrels)} queries, NDCG@10"})
        logger.info("%s %s: %s%s", task.name, split, json.dumps(results[split]["all"]),
                    f"; hybrid (w={weight:g}) {json.dumps(results[split]['hybrid']['all'])}" if weight is not None
                    else "")
    (eval_dir / "metrics.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def default_search_mode(generative_ndcg: float, hybrid_ndcg: float) -> str:
    """The default search mode from the validation NDCG@10 of both modes: hybrid unless it is below generative.

    A tie goes to hybrid: at the smallest weight that ties it answers the split's queries as well and also reads
    the dense evidence the split could not weigh (e.g. titles the retriever was trained on, which it finds
    anyway). With w = 1 in the grid hybrid's top 10 is the beam's, so its best weight is never below.
    """
    return "generative" if hybrid_ndcg < generative_ndcg else "hybrid"


def choose_search_weight(candidates: SearchCandidates, weights: Sequence[float], query_ids: Sequence[str],
                         doc_ids: Sequence[str], qrels: Mapping[str, Mapping[str, int]]
                         ) -> tuple[float, dict[str, float]]:
    """The hybrid weight with the best NDCG@10 of the candidates' ranking (ties: the smaller weight), and
    NDCG@10 per weight."""
    figures = {f"{w:g}": score_run(decoded_run(rank_candidates(candidates, w, 10), query_ids, doc_ids), qrels,
                                   ("ndcg@10",))["ndcg@10"] for w in weights}
    best = max(weights, key=lambda w: (figures[f"{w:g}"], -w))
    return float(best), figures


def search_settings(metrics: Mapping[str, Any]) -> SearchSettings | None:
    """The bundle's `models.retriever.search` from a retriever's eval/metrics.json (`evaluate_task`), or None
    when it holds no hybrid evaluation (evaluated without one, or before hybrid search existed)."""
    if "hybrid_weight" not in metrics:
        return None
    return SearchSettings(default_mode=metrics["default_mode"], hybrid_weight=float(metrics["hybrid_weight"]),
                          dense_candidates=int(metrics["dense_candidates"]),
                          chosen_on=str(metrics["hybrid_chosen_on"]))


def ids_presets_for(spec: str, methods: Sequence[str]) -> dict[str, str]:
    """method -> learn-ids preset from a benchmark's `--ids-preset` value: one preset for every method
    ("quick"), or a default with per-method exceptions ("quick,lmindexer=cpu-encoder")."""
    default, presets = None, {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if "=" in part:
            method, _, preset = part.partition("=")
            if method.strip() not in methods:
                raise ConfigError(f"--ids-preset names {method.strip()!r}, which is not one of the methods run "
                                  f"({', '.join(methods)})")
            presets[method.strip()] = preset.strip()
        elif default is None:
            default = part
        else:
            raise ConfigError(f"--ids-preset {spec!r}: two default presets ({default!r}, {part!r})")
    missing = [m for m in methods if m not in presets and default is None]
    if missing:
        raise ConfigError(f"--ids-preset {spec!r} gives no preset for {', '.join(missing)}")
    return {m: presets.get(m, default or "") for m in methods}


def ids_overrides_for(specs: Sequence[str], methods: Sequence[str]) -> dict[str, list[str]]:
    """method -> learn-ids overrides from a benchmark's repeated `--ids-set METHOD:KEY=VALUE`; a METHOD
    that is not run is an error (it would otherwise be ignored without a word)."""
    overrides: dict[str, list[str]] = {}
    for spec in specs:
        method, colon, setting = spec.partition(":")
        if not colon or "=" not in setting:
            raise ConfigError(f"--ids-set {spec!r}: expected METHOD:KEY=VALUE, e.g. lmindexer:num_threads=1")
        if method.strip() not in methods:
            raise ConfigError(f"--ids-set names {method.strip()!r}, which is not one of the methods run "
                              f"({', '.join(methods)})")
        overrides.setdefault(method.strip(), []).append(setting.strip())
    return overrides


def _mode_figures(split_metrics: Mapping[str, Any] | None, mode: str) -> dict[str, float] | None:
    """One search mode's figures in an evaluation's split record (`evaluate_task`): the beam's ranking under
    "all" for generative, under "hybrid"/"all" for hybrid; None when that split or mode was not evaluated."""
    if not split_metrics:
        return None
    if mode == "generative":
        return dict(split_metrics["all"])
    hybrid = split_metrics.get("hybrid")
    return dict(hybrid["all"]) if hybrid else None


def compare_id_methods(task: Task, work: Path, methods: Sequence[str], ids_presets: Mapping[str, str],
                       ids_overrides: Mapping[str, Sequence[str]], config: FinetuneConfig,
                       split: str = "test", latency_queries: int = 30, progress: bool = True,
                       data_dir: str | Path | None = None) -> dict[str, Any]:
    """The benchmarks' generative half: for each ID method, learn IDs on the task's documents, fine-tune
    the same downstream model on them, evaluate `split` (all / warm / cold-start documents); for the
    first method also time one query at a time at beam 20, torch vs onnxruntime (CPU).

    Every stage skips work already done under `work` (learn-ids output, finetune.json, eval metrics), and
    fine-tuning resumes from its checkpoint, so an interrupted benchmark can be re-run to completion.
    `data_dir`: the task's folder, recorded in each finetune.json (`finetune_task`).
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    if not corpus.is_file():
        write_corpus_jsonl(corpus, task.documents)
    results: dict[str, Any] = {}
    for method in methods:
        started = time.perf_counter()
        ids_dir = work / f"ids-{method}"
        if not (ids_dir / "ids.jsonl").is_file():
            learn_ids(corpus=corpus, method=method, out_dir=ids_dir, preset=ids_presets[method],
                      overrides=list(ids_overrides.get(method, ())), overwrite=True)
        learn_seconds = time.perf_counter() - started
        source = load_id_source(ids_dir)
        model_dir = work / f"finetune-{method}"
        if not (model_dir / FINETUNE_RECORD).is_file():
            finetune_task(task, source, config, model_dir, progress=progress, data_dir=data_dir)
        finetune_seconds = time.perf_counter() - started - learn_seconds
        metrics_path = model_dir / "eval" / "metrics.json"
        if metrics_path.is_file() and split in json.loads(metrics_path.read_text()):
            evaluation = json.loads(metrics_path.read_text())
        else:
            evaluation = evaluate_task(task, model_dir, splits=(split,), progress=progress)
        metrics = json.loads((ids_dir / "metrics.json").read_text())
        # Timings from the stages' own records, so a resumed run reports what the work cost.
        learn_seconds = float(metrics.get("wall_seconds", {}).get("total", learn_seconds))
        finetune_record = json.loads((model_dir / FINETUNE_RECORD).read_text())
        finetune_seconds = float(finetune_record["training"].get("train_seconds", finetune_seconds))
        results[method] = {
            "ids": {"preset": ids_presets[method], "overrides": list(ids_overrides.get(method, ())),
                    "num_levels": source.num_levels, "codebook_sizes": list(source.codebook_sizes),
                    "counter_size": source.table.counter_size,
                    "collision_rate": metrics.get("collisions", {}).get("collision_rate")},
            "test": evaluation[split]["all"], "queries": evaluation[split]["queries"],
            "warm": evaluation[split]["warm"], "cold_start": evaluation[split]["cold"],
            "cold_start_queries": evaluation[split]["cold_queries"], "cold_start_assignment": evaluation["cold_start"],
            "only_valid_ids": evaluation[split]["valid_ids"],
            # each search mode's figures on this split and on the dev split ("valid"), where evaluated
            "modes": {mode: {"test": _mode_figures(evaluation.get(split), mode),
                             "dev": _mode_figures(evaluation.get("valid"), mode)}
                      for mode in ("generative", "hybrid") if _mode_figures(evaluation.get(split), mode) is not None},
            "default_mode": evaluation.get("default_mode"), "hybrid_weight": evaluation.get("hybrid_weight"),
            "finetune_steps": finetune_record["training"]["steps"],
            "finetune_examples": finetune_record["training"]["examples"],
            "finetune_loss_first_last20": [finetune_record["training"]["losses"][0],
                                           float(np.mean(finetune_record["training"]["losses"][-20:]))],
            "seconds": {"learn_ids": round(learn_seconds, 1), "finetune": round(finetune_seconds, 1),
                        "evaluate_per_query": evaluation[split]["seconds_per_query"]},
        }
        logger.info("%s: %s", method, json.dumps(results[method]["test"]))
    if latency_queries and methods:
        results["latency"] = _latency(task, work / f"finetune-{methods[0]}", split, latency_queries)
    return results


def _latency(task: Task, model_dir: Path, split: str, count: int) -> dict[str, Any]:
    """Per-query latency at beam 20 of one fine-tuned model, torch vs onnxruntime, on the CPU."""
    # the export pulls in onnx and onnxscript (about 4 s more, measured): only this benchmark path needs it
    from training.downstream.export import export_onnx

    record, config, network = load_finetuned(model_dir)
    table = read_ids_jsonl(model_dir / "eval" / "ids.jsonl")  # the evaluated documents, cold ones included
    trie = SemanticIdTrie.build(table.semantic_ids, codebook_sizes=list(network.config.codebook_sizes))
    tokenizer = load_tokenizer(network.config.encoder)
    torch_model = TorchModel(network, tokenizer, config.max_input_length, device="cpu")
    files = export_onnx(network, model_dir / "onnx")
    onnx_model = OnnxRunner(model_dir / "onnx" / files["encoder"], model_dir / "onnx" / files["decoder_step"],
                            TextTokenizer(resolve_encoder_path(network.config.encoder) / "tokenizer.json",
                                          config.max_input_length),
                            network.config.codebook_sizes, name=record["method"],
                            intra_op_threads=torch.get_num_threads())
    texts = task.eval_sets[split].texts[:count]
    return {"model": record["method"], "torch_threads": torch.get_num_threads(),
            "torch": per_query_latency(torch_model, texts, trie),
            "onnxruntime": per_query_latency(onnx_model, texts, trie),
            "note": "one query at a time on the CPU: tokenize + encode + constrained beam search (beam 20, top 10)"}
