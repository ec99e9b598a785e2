"""`lmindexer build-demo`: a small working bundle from the vendored Beauty data, end to end.

Steps (presets training/configs/demo-<preset>.toml; `quick` is `make run`'s bundle, `integration` the
integration tests' bundle, `tiny` the quickest end-to-end run):

1. keep the `num_items` most interacted-with Beauty items; every user's sequence is filtered to
   them and users left with fewer than 3 items are dropped (leave-one-out needs 3);
2. `learn-ids` on those items (LMIndexer by default; HC is used, with a warning, only if the
   LMIndexer method cannot be imported);
3. fine-tune a retriever on document-as-query and title-as-query pairs, and train the item-token
   recommender (`training.recommendation`, preset `recommender_preset`) on the subset written as
   P5 files (items and user sequences; leave-one-out, every item seen in training);
4. evaluate both briefly: the retriever on two disjoint seeded samples of item titles (title -> its
   item): `dev_queries` titles (the "valid" split) choose its hybrid weight and default search mode,
   `eval_queries` others (the "test" split) measure it; the recommender on `eval_queries` validation
   and test users, whose validation figures choose its default ranking mode;
5. export the bundle (indexer + retriever + recommender), with ONNX parity, and the indexer's int8
   encoder when it agrees with the fp32 one (`indexer_int8`, `indexer_int8_min_agreement`).

Intermediate files live in a work directory beside the output (kept with `keep_work`).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import config_to_dict, load_config, preset_path
from training.data.amazon import AmazonDataset, UserSequence, load_amazon, open_lines, write_items_corpus
from training.downstream.experiment import (
    EvalSet,
    Task,
    beauty_task,
    evaluate_task,
    finetune_task,
    load_finetuned,
    search_settings,
)
from training.downstream.export import BundleModel, export_bundle, load_recommender
from training.downstream.finetune import FinetuneConfig, load_indexer_network
from training.downstream.tasks import load_id_source
from training.encoder import load_tokenizer
from training.errors import ConfigError
from training.indexing.learning import learn_ids, resolve_method
from training.progress import library_bars
from training.recommendation.run import evaluate_model, fit
from training.recommendation.settings import RecommenderSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Settings of build-demo (presets: training/configs/demo-<preset>.toml)."""

    num_items: int = field(default=1000, metadata={"help": "Most popular Beauty items kept."})
    max_users: int = field(default=4000, metadata={"help": "Users kept at most (first in file order)."})
    ids_method: str = field(default="lmindexer", metadata={"help": "learn-ids method (lmindexer, rqvae, hc, rkmeans)."})
    ids_preset: str = field(default="quick", metadata={"help": "learn-ids preset."})
    ids_overrides: tuple[str, ...] = field(default=(), metadata={"help": "learn-ids KEY=VALUE overrides."})
    retriever_preset: str = field(default="quick", metadata={"help": "finetune preset of the retriever."})
    retriever_overrides: tuple[str, ...] = field(default=(), metadata={"help": "Retriever KEY=VALUE overrides."})
    recommender_preset: str = field(default="tiny", metadata={
        "help": "Preset of the item-token recommender (training/configs/recommender-<preset>.toml)."})
    recommender_overrides: tuple[str, ...] = field(default=(), metadata={
        "help": "Recommender KEY=VALUE overrides (training.recommendation.settings.RecommenderSettings)."})
    eval_queries: int = field(default=200, metadata={"help": "Evaluation queries per model (0 = skip)."})
    dev_queries: int = field(default=200, metadata={
        "help": "Item titles of the retriever's development sample (disjoint from its evaluation sample): they "
                "choose the hybrid search weight and the default search mode (0 = not chosen: generative)."})
    parity_inputs: int = field(default=100, metadata={"help": "Inputs of the ONNX parity check per model."})
    max_document_length: int = field(default=128, metadata={"help": "Tokens of a document for the indexer."})
    seed: int = field(default=7, metadata={"help": "Seed of the samples (parity inputs, evaluation users)."})
    indexer_int8: bool = field(default=True, metadata={
        "help": "Also export indexer/encoder.int8.onnx (int8 weights; the service's /index-documents runs "
                "about twice as fast with it). Off: fp32 only."})
    indexer_int8_min_agreement: float = field(default=0.9, metadata={
        "help": "Fraction of the indexer's parity inputs whose whole learned prefix must be the same with the "
                "int8 encoder as with the fp32 one; below it the int8 graph is not written."})

    def __post_init__(self) -> None:
        if self.num_items < 20:
            raise ConfigError("num_items must be >= 20")
        if not self.indexer_int8_min_agreement >= 0:
            raise ConfigError("indexer_int8_min_agreement must be >= 0")
        if self.eval_queries < 0 or self.dev_queries < 0:
            raise ConfigError("eval_queries and dev_queries must be >= 0")


def load_demo_config(preset: str = "quick", overrides: tuple[str, ...] | list[str] = ()) -> DemoConfig:
    """DemoConfig from training/configs/demo-<preset>.toml (or a TOML path) and KEY=VALUE overrides."""
    return load_config(DemoConfig, preset_path("demo", preset), overrides)


def beauty_subset(num_items: int, max_users: int) -> Any:
    """The vendored Beauty data restricted to its `num_items` most popular items (see the module docstring)."""
    dataset = load_amazon()
    counts = Counter(a for user in dataset.sequences for a in user.items)
    keep = {asin for asin, _ in counts.most_common(num_items)}
    sequences = []
    for user in dataset.sequences:
        items = tuple(a for a in user.items if a in keep)
        if len(items) >= 3:
            sequences.append(UserSequence(user.user_id, items))
        if len(sequences) >= max_users:
            break
    used = {a for s in sequences for a in s.items}
    items = {asin: item for asin, item in dataset.items.items() if asin in keep and asin in used}
    logger.info("demo subset: %d items, %d users", len(items), len(sequences))
    return AmazonDataset(items, sequences, dataset.items_path, dataset.sequences_path)


def write_p5(dataset: AmazonDataset, directory: Path) -> tuple[Path, Path]:
    """The subset as P5 files: its items' lines of the items file (same format) and `USER ITEM ...` lines."""
    directory.mkdir(parents=True, exist_ok=True)
    items_path, sequences_path = directory / "items.jsonl", directory / "user_sequence.txt"
    with open(items_path, "w", encoding="utf-8") as out:
        for _, line in open_lines(dataset.items_path):
            if line.strip() and str(json.loads(line).get("asin", "")).strip() in dataset.items:
                out.write(line + "\n")
    sequences_path.write_text("".join(f"{u.user_id} {' '.join(u.items)}\n" for u in dataset.sequences),
                              encoding="utf-8")
    return items_path, sequences_path


def _learn_ids(corpus: Path, out: Path, config: DemoConfig, progress: bool = True) -> dict[str, Any]:
    method, preset = config.ids_method, config.ids_preset
    try:
        resolve_method(method)
        preset_path(method, preset)
    except (ImportError, ConfigError) as exc:
        logger.warning("learn-ids method %r is not available (%s); the demo falls back to HC IDs", method, exc)
        method, preset = "hc", "quick"
    overrides = list(config.ids_overrides) if method == config.ids_method else []
    if not progress and method in ("lmindexer", "rqvae"):  # the methods with bars (HC has none)
        overrides.append("progress=false")
    return learn_ids(corpus=corpus, method=method, out_dir=out, preset=preset, overrides=overrides,
                     overwrite=True)


def build_demo(out_dir: Path, config: DemoConfig, overwrite: bool = False, keep_work: bool = False,
               progress: bool = True) -> dict[str, Any]:
    """Build the demo bundle at `out_dir` (see the module docstring); returns its manifest."""
    library_bars(progress)
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir} already exists and is not empty (use --overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.work-", dir=out_dir.parent))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    rng = random.Random(config.seed)
    try:
        dataset = beauty_subset(config.num_items, config.max_users)
        write_items_corpus(dataset, work / "corpus.jsonl")
        ids_record = _learn_ids(work / "corpus.jsonl", work / "ids", config, progress=progress)
        timings["learn_ids"] = time.perf_counter() - started
        source = load_id_source(work / "ids")

        # retriever: document-as-query + title-as-query; two disjoint seeded samples of titles (title -> its
        # item): "valid" chooses the hybrid weight and default search mode, "test" measures it
        rec_task = beauty_task(dataset)
        titles = {d.doc_id: str(d.metadata.get("title") or "") for d in rec_task.documents}
        title_ids = [d for d in titles if titles[d]]
        drawn = rng.sample(title_ids, min(len(title_ids), config.dev_queries + config.eval_queries))
        dev_ids, test_ids = drawn[:config.dev_queries], drawn[config.dev_queries:]
        eval_sets = {name: EvalSet(ids, [titles[d] for d in ids], {d: {d: 1} for d in ids})
                     for name, ids in (("valid", dev_ids), ("test", test_ids)) if ids}
        retrieval = Task(kind="retrieval", name="beauty-titles", documents=rec_task.documents,
                         eval_sets=eval_sets, titles=titles)
        retriever_config = load_config(FinetuneConfig, preset_path("finetune", config.retriever_preset),
                                       [*config.retriever_overrides, 'doc_as_query="on"', "cold_start_fraction=0.0"])
        recommender_settings = load_config(RecommenderSettings, preset_path("recommender", config.recommender_preset),
                                           [*config.recommender_overrides, "cold_start_fraction=0.0"])
        mark = time.perf_counter()
        finetune_task(retrieval, source, retriever_config, work / "retriever", progress=progress)
        timings["finetune_retriever"] = time.perf_counter() - mark
        mark = time.perf_counter()
        items_path, sequences_path = write_p5(dataset, work / "p5")
        fit(items_path, sequences_path, work / "ids", recommender_settings, work / "recommender", progress=progress)
        timings["train_recommender"] = time.perf_counter() - mark
        mark = time.perf_counter()
        evaluation: dict[str, Any] = {}
        if eval_sets:  # validation first: it chooses the weight the test split is scored with
            evaluation["retriever"] = evaluate_task(retrieval, work / "retriever", splits=tuple(eval_sets),
                                                    max_queries=0, progress=progress)
        # validation chooses the recommender's default mode and hybrid weight (also without eval_queries)
        evaluate_model(work / "recommender", splits=("valid", "test") if config.eval_queries else ("valid",),
                       max_users=config.eval_queries)
        timings["evaluate"] = time.perf_counter() - mark

        mark = time.perf_counter()
        _, retriever_cfg, retriever = load_finetuned(work / "retriever")
        documents, ids, recommender, recommender_metrics, _ = load_recommender(work / "recommender",
                                                                              config.parity_inputs, config.seed)
        evaluation["recommender"] = recommender_metrics
        if source.network_dir is not None:
            indexer = load_indexer_network(source.network_dir, retriever.config.counter_size,
                                           retriever_cfg.indexer_logit_temperature)
            indexer_note = "the LMIndexer indexer network"
        else:  # no indexer network (HC / rq-VAE): the retriever maps a document's text to its ID
            indexer = retriever
            indexer_note = f"the retriever (the {source.method} method has no indexer network)"
        # The indexer reads documents as learn-ids did (its max_length), else the demo's setting.
        document_length = source.document_length if source.network_dir is not None else config.max_document_length
        texts = [d.text for d in documents]
        count = config.parity_inputs
        parity = {
            "indexer": rng.sample(texts, min(count, len(texts))),
            "retriever": rng.sample([titles[d] for d in title_ids], min(count, len(title_ids))),
        }
        tokenizer = load_tokenizer(retriever.config.encoder)
        models = {
            "indexer": BundleModel(indexer, parity["indexer"], document_length, beam_size=retriever_cfg.beam_size),
            "retriever": BundleModel(retriever, parity["retriever"], retriever_cfg.max_input_length,
                                     beam_size=retriever_cfg.beam_size,
                                     search=search_settings(evaluation.get("retriever", {}))),
        }
        training_config = {
            "demo": config_to_dict(config),
            "ids": {"method": ids_record["method"], "preset": ids_record["preset"], "config": ids_record["config"],
                    "num_documents": ids_record["num_documents"]},
            "indexer": indexer_note,
            "retriever": config_to_dict(retriever_cfg),
            "recommender": config_to_dict(recommender_settings),
        }
        timings_note = {k: round(v, 1) for k, v in timings.items()}
        manifest = export_bundle(
            out_dir, models, documents, ids, tokenizer, encoder=retriever.config.encoder, evaluation=evaluation,
            training_config={**training_config, "wall_seconds": timings_note},
            overwrite=overwrite, indexer_int8=config.indexer_int8,
            indexer_int8_min_agreement=config.indexer_int8_min_agreement, recommender=recommender,
        )
        timings["export"] = time.perf_counter() - mark
        logger.info("build-demo done in %.1f s: %s", time.perf_counter() - started,
                    json.dumps({k: round(v, 1) for k, v in timings.items()}))
        return manifest
    finally:
        if keep_work:
            logger.info("work files kept in %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
