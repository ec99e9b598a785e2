"""`lmindexer build-demo`: a working bundle from the vendored Beauty data, end to end, in cached stages.

Presets: training/configs/demo-<preset>.toml. `quick` is `make run`'s bundle: the whole catalogue
(12,101 items, 22,363 users); `integration` the integration tests' (600 items); `tiny` the quickest
end-to-end run (150 items).

The build is six stages (`training.downstream.stages`), each in its own folder of a persistent work
directory beside the bundle, `<out>.work/` (`bundles/demo.work/` for `make run`):

1. `data`: the catalogue. The `num_items` most interacted-with Beauty items (0 = every item); a seeded
   sample of `holdout_items` of them is left out of everything (IDs, retriever, recommender, bundle)
   and written as documents for a later POST /index-documents (below); every user's sequence is
   filtered to the items kept, users left with fewer than 3 items are dropped (leave-one-out needs
   3), and the first `max_users` users are kept (0 = every user). Written as P5 files (items and
   user sequences) and as the learn-ids corpus;
2. `learn_ids`: `learn-ids` on those items (LMIndexer by default; HC is used, with a warning, only if
   the LMIndexer method cannot be imported);
3. `retriever`: fine-tune a retriever on document-as-query and title-as-query pairs;
4. `recommender`: train the item-token recommender (`training.recommendation`, preset
   `recommender_preset`) on the P5 files (leave-one-out, every item seen in training);
5. `evaluate`: both briefly. The retriever on two disjoint seeded samples of item titles (title -> its
   item): `dev_queries` titles (the "valid" split) choose its hybrid weight and default search mode,
   `eval_queries` others (the "test" split) measure it; the recommender on `eval_queries` validation
   and test users, whose validation figures choose its default ranking mode;
6. `export`: the bundle (indexer + retriever + recommender), with ONNX parity, and the indexer's int8
   encoder when it agrees with the fp32 one (`indexer_int8`, `indexer_int8_min_agreement`).

Caching and resuming: a finished stage writes `<stage>/stage.json` with a hash of the settings that
produced it (its own and those of the stages it reads) and its wall time. A rerun skips every finished
stage whose hash matches, runs again those whose settings changed and every stage that depends on them
(the retriever and the recommender depend on the data and the IDs, not on each other), and resumes a
stage that was interrupted with the same settings from its own checkpoints:

- `learn_ids` (LMIndexer): its training-loop stages checkpoint under `learn_ids/checkpoints/`
  (`checkpoint_dir`, every `checkpoint_every` steps and at the end of each stage); a rerun returns at
  once from the finished stages (their weights are loaded) and continues the interrupted one with the
  batch it would have taken next. The frozen encoder's states come from the disk cache
  ($LMINDEXER_CACHE_DIR). The other methods start the stage again (they take seconds to minutes);
- `retriever`: the fine-tuning loop's checkpoint (`retriever/model/checkpoint/`, every
  `checkpoint_every` steps of its preset);
- `recommender`: the training loop's checkpoint (`recommender/model/train/checkpoint.pt`, at the end
  of every epoch; a time budget counts from the resumed start);
- `data`, `evaluate` and `export` start again (seconds to a few minutes).

`make run` calls `build-demo` while the bundle has no manifest.json, so calling it again after an
interruption continues the build. The work directory is removed after a successful export unless
`keep_work` (`--keep-work`); a failed or interrupted build keeps it. `--fresh` removes it first. An
existing bundle is refused without `--overwrite`, as before; with `--overwrite` (and a kept work
directory) only what changed is rebuilt.

Held-out items (`holdout_items` > 0): `<out>.holdout.jsonl` beside the bundle (`bundles/demo.holdout.jsonl`),
one document per line in the body format of POST /index-documents (`{"doc_id", "text", "metadata"}`:
the same text template and metadata as the bundle's documents.jsonl), so a benchmark can index them
through the API; written with the bundle (a build without held-out items removes a stale file).

Progress: one line per stage start (`stage 3/6: fine-tune the retriever (...); ETA this stage ...,
whole build ...`, from the preset's `stage_seconds` scaled by this machine's measured speed), the
training loops' own progress (bars on a terminal, a log line every 30 s otherwise), and at the end
the wall seconds of every stage, also in the manifest (`training_config.wall_seconds`,
`training_config.build`).

Determinism: every sample is seeded (`seed`: held-out items, evaluation users, parity inputs; each
trainer its own `seed`), and the training loop is a function of its seed on a CPU (bit for bit) with a
fixed thread count. LMIndexer gives the same IDs for the same settings only with one torch thread
(`num_threads = 1`: with 2 threads float reductions differ in the last bits and 0.2-0.8% of the codes
per level differed between two builds); every preset here learns IDs on one thread, and `quick` and
`tiny` run the retriever and the recommender on one thread too (`integration`'s retriever uses the
finetune preset's 2). An interrupted and resumed build gives the IDs of an uninterrupted one (the loop
resumes with its RNG state and data position; seen on `tiny`). What still varies between two builds:
a recommender trained with a time budget (`time_budget_s`, quick's) stops at the end of the first
epoch past it, so how many epochs it trains depends on the machine's speed and load (`max_epochs` and
early stopping alone do not); and the ONNX parity check, which compares onnxruntime with torch, lets
results whose scores differ by less than its tolerance swap places (`bundle.near_tie_agreement`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import random
import shutil
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bundle import BundleManifest, write_manifest
from training.config import config_to_dict, load_config, preset_path
from training.data.amazon import (
    BEAUTY_ITEMS,
    BEAUTY_SEQUENCES,
    AmazonDataset,
    UserSequence,
    items_as_documents,
    load_amazon,
    open_lines,
    write_items_corpus,
)
from training.downstream.experiment import (
    EvalSet,
    Task,
    evaluate_task,
    finetune_task,
    load_finetuned,
    search_settings,
)
from training.downstream.export import BundleModel, document_metadata, export_bundle, load_recommender
from training.downstream.finetune import FinetuneConfig, load_indexer_network
from training.downstream.stages import Stage, StageRunner
from training.downstream.tasks import load_id_source
from training.encoder import load_tokenizer
from training.errors import ConfigError
from training.indexing.learning import learn_ids, load_method_config, resolve_method
from training.progress import library_bars
from training.recommendation.data import load_dataset
from training.recommendation.run import evaluate_model, fit
from training.recommendation.settings import RecommenderSettings

logger = logging.getLogger(__name__)

# The stages in order (their folders under the work directory and their keys in `stage_seconds`).
STAGES = ("data", "learn_ids", "retriever", "recommender", "evaluate", "export")
# Bump when a stage's code changes what it writes, so that work directories of an older version are rebuilt.
STAGES_VERSION = 1


@dataclass(frozen=True)
class DemoConfig:
    """Settings of build-demo (presets: training/configs/demo-<preset>.toml)."""

    num_items: int = field(default=1000, metadata={
        "help": "Most popular Beauty items kept (0 = every item of the catalogue)."})
    max_users: int = field(default=4000, metadata={"help": "Users kept at most, first in file order (0 = every user)."})
    holdout_items: int = field(default=0, metadata={
        "help": "Items left out of everything (a seeded sample of the kept ones) and written beside the bundle as "
                "<out>.holdout.jsonl, documents in the POST /index-documents body format."})
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
    seed: int = field(default=7, metadata={
        "help": "Seed of the samples (held-out items, parity inputs, evaluation users)."})
    indexer_int8: bool = field(default=True, metadata={
        "help": "Also export indexer/encoder.int8.onnx (int8 weights; the service's /index-documents runs "
                "about twice as fast with it). Off: fp32 only."})
    indexer_int8_min_agreement: float = field(default=0.9, metadata={
        "help": "Fraction of the indexer's parity inputs whose whole learned prefix must be the same with the "
                "int8 encoder as with the fp32 one; below it the int8 graph is not written."})
    stage_seconds: tuple[str, ...] = field(default=(), metadata={
        "help": "Typical wall seconds of the stages on a quiet 2-core machine, STAGE=SECONDS (stages: data, "
                "learn_ids, retriever, recommender, evaluate, export): the progress lines' first ETAs."})

    def __post_init__(self) -> None:
        if self.num_items != 0 and self.num_items < 20:
            raise ConfigError("num_items must be 0 (every item) or >= 20")
        if self.max_users < 0 or self.holdout_items < 0:
            raise ConfigError("max_users and holdout_items must be >= 0")
        if not self.indexer_int8_min_agreement >= 0:
            raise ConfigError("indexer_int8_min_agreement must be >= 0")
        if self.eval_queries < 0 or self.dev_queries < 0:
            raise ConfigError("eval_queries and dev_queries must be >= 0")
        self.typical_seconds()  # raises on a malformed entry

    def typical_seconds(self) -> dict[str, float]:
        """stage_seconds as a dict (stages not named: 0, no ETA until the machine's speed is measured)."""
        out: dict[str, float] = {}
        for entry in self.stage_seconds:
            name, sep, value = entry.partition("=")
            if not sep or name.strip() not in STAGES:
                raise ConfigError(f"stage_seconds entry {entry!r}: expected STAGE=SECONDS, STAGE one of "
                                  f"{', '.join(STAGES)}")
            try:
                seconds = float(value)
            except ValueError:
                raise ConfigError(f"stage_seconds entry {entry!r}: {value!r} is not a number") from None
            if not seconds >= 0:
                raise ConfigError(f"stage_seconds entry {entry!r}: seconds must be >= 0")
            out[name.strip()] = seconds
        return out


def load_demo_config(preset: str = "quick", overrides: tuple[str, ...] | list[str] = ()) -> DemoConfig:
    """DemoConfig from training/configs/demo-<preset>.toml (or a TOML path) and KEY=VALUE overrides."""
    return load_config(DemoConfig, preset_path("demo", preset), overrides)


def work_dir(out_dir: Path) -> Path:
    """The build's work directory: `<out>.work` beside the bundle."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.work"


def holdout_path(out_dir: Path) -> Path:
    """Where the held-out items' documents go: `<out>.holdout.jsonl` beside the bundle."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.holdout.jsonl"


def popular_items(dataset: AmazonDataset, num_items: int) -> list[str]:
    """The `num_items` most interacted-with items (every item with an interaction for 0), most popular first."""
    counts = Counter(a for user in dataset.sequences for a in user.items)
    return [asin for asin, _ in counts.most_common(num_items or None)]


def choose_holdout(candidates: Collection[str], count: int, seed: int) -> list[str]:
    """A seeded sample of `count` of `candidates` (sorted, so it does not depend on their order)."""
    if count > len(candidates):
        raise ConfigError(f"holdout_items = {count} but only {len(candidates)} items are kept")
    return sorted(random.Random(seed).sample(sorted(candidates), count)) if count else []


def beauty_subset(num_items: int, max_users: int, holdout: Collection[str] = (),
                  dataset: AmazonDataset | None = None) -> AmazonDataset:
    """The vendored Beauty data (or `dataset`) restricted to its `num_items` most popular items (0 = all),
    less the `holdout` items, and to the first `max_users` users (0 = all) left with >= 3 items."""
    dataset = dataset or load_amazon()
    left_out = set(holdout)
    keep = {a for a in popular_items(dataset, num_items) if a not in left_out}
    sequences = []
    for user in dataset.sequences:
        items = tuple(a for a in user.items if a in keep)
        if len(items) >= 3:
            sequences.append(UserSequence(user.user_id, items))
        if max_users and len(sequences) >= max_users:
            break
    used = {a for s in sequences for a in s.items}
    items = {asin: item for asin, item in dataset.items.items() if asin in keep and asin in used}
    logger.info("demo catalogue: %d items, %d users (%d items held out)", len(items), len(sequences), len(left_out))
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


def write_holdout_documents(dataset: AmazonDataset, asins: Collection[str], path: Path) -> int:
    """The `asins` items of `dataset` as POST /index-documents documents, one JSON object per line:
    {"doc_id", "text", "metadata"}, text and metadata as the bundle's documents.jsonl has them."""
    chosen = set(asins)
    subset = AmazonDataset({a: item for a, item in dataset.items.items() if a in chosen}, [], dataset.items_path,
                           dataset.sequences_path)
    documents = items_as_documents(subset)
    with open(path, "w", encoding="utf-8") as out:
        for document in documents:
            out.write(json.dumps({"doc_id": document.doc_id, "text": document.text,
                                  "metadata": document_metadata(document)}, ensure_ascii=False) + "\n")
    return len(documents)


def _data_fingerprint() -> str:
    """A hash of the vendored Beauty files (a changed file rebuilds everything)."""
    digest = hashlib.sha256()
    for path in (BEAUTY_ITEMS, BEAUTY_SEQUENCES):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def _ids_choice(config: DemoConfig, progress: bool) -> tuple[str, str, list[str]]:
    """(method, preset, overrides) of the learn_ids stage: the configured method, or HC if it is unavailable."""
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
    return method, preset, overrides


def _settings(config: Any, leave_out: Collection[str] = ()) -> dict[str, Any]:
    """A config's values as hashed for its stage, without those that do not change its output."""
    return {k: v for k, v in config_to_dict(config).items() if k not in leave_out}


def _retrieval_task(dataset: AmazonDataset, dev_queries: int, eval_queries: int, seed: int) -> Task:
    """The retriever's task: the catalogue's documents, titles for title-as-query pairs, and two disjoint
    seeded samples of titles (their own item is the answer): `dev_queries` of them the "valid" split
    (chooses the hybrid weight and default search mode), `eval_queries` others the "test" split."""
    documents = items_as_documents(dataset)
    titles = {d.doc_id: str(d.metadata.get("title") or "") for d in documents}
    title_ids = [d for d in titles if titles[d]]
    rng = random.Random(seed)
    drawn = rng.sample(title_ids, min(len(title_ids), dev_queries + eval_queries))
    dev_ids, test_ids = drawn[:dev_queries], drawn[dev_queries:]
    eval_sets = {name: EvalSet(ids, [titles[d] for d in ids], {d: {d: 1} for d in ids})
                 for name, ids in (("valid", dev_ids), ("test", test_ids)) if ids}
    return Task(kind="retrieval", name="beauty-titles", documents=documents, eval_sets=eval_sets,
                titles=titles)


@contextlib.contextmanager
def _exclusive(work: Path) -> Iterator[None]:
    """Hold `work/.lock`: a second build-demo in the same work directory is refused, not interleaved."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another build-demo is running in {work}") from None
        yield


class DemoBuild:
    """The stages of one build-demo (module docstring); `stages()` for the runner."""

    def __init__(self, out_dir: Path, config: DemoConfig, work: Path, overwrite: bool, progress: bool) -> None:
        self.out_dir = Path(out_dir)
        self.config = config
        self.work = work
        self.overwrite = overwrite
        self.progress = progress
        self.manifest: BundleManifest | None = None
        self.ids_method, self.ids_preset, self.ids_overrides = _ids_choice(config, progress)
        self.ids_config = load_method_config(self.ids_method, self.ids_preset, self.ids_overrides)
        self.retriever_config = load_config(FinetuneConfig, preset_path("finetune", config.retriever_preset),
                                            [*config.retriever_overrides, 'doc_as_query="on"',
                                             "cold_start_fraction=0.0"])
        self.recommender_settings = load_config(RecommenderSettings,
                                                preset_path("recommender", config.recommender_preset),
                                                [*config.recommender_overrides, "cold_start_fraction=0.0"])
        self.wall_seconds: dict[str, float] = {}

    # paths of the stages' outputs
    def path(self, stage: str, *parts: str) -> Path:
        return self.work.joinpath(stage, *parts)

    @property
    def ids_dir(self) -> Path:
        return self.path("learn_ids", "ids")

    def dataset(self) -> AmazonDataset:
        return load_dataset(self.path("data", "items.jsonl"), self.path("data", "user_sequence.txt"))

    def stages(self) -> list[Stage]:
        c = self.config
        typical = c.typical_seconds()
        data = {"version": STAGES_VERSION, "beauty": _data_fingerprint(), "num_items": c.num_items,
                "max_users": c.max_users, "holdout_items": c.holdout_items,
                **({"seed": c.seed} if c.holdout_items else {})}
        ids = {"method": self.ids_method, "preset": self.ids_preset,
               "config": _settings(self.ids_config, ("progress", "checkpoint_dir"))}
        items = "every Beauty item" if not c.num_items else f"the {c.num_items} most popular Beauty items"
        users = "every user" if not c.max_users else f"at most {c.max_users} users"
        levels = getattr(self.ids_config, "num_levels", None)
        size = getattr(self.ids_config, "codebook_size", None)
        shape = f", {levels} x {size} codes + counter" if levels and size else ""
        r, s = self.retriever_config, self.recommender_settings
        return [
            Stage("data", "select the catalogue",
                  f"{items}, {users} with >= 3 of them"
                  + (f", {c.holdout_items} items held out" if c.holdout_items else ""),
                  data, self.run_data, (), typical.get("data", 0.0)),
            Stage("learn_ids", "learn semantic IDs",
                  f"learn-ids --method {self.ids_method} --preset {self.ids_preset}{shape}",
                  ids, self.run_learn_ids, ("data",), typical.get("learn_ids", 0.0)),
            Stage("retriever", "fine-tune the retriever",
                  f"{r.steps} steps of {r.batch_size} document- and title-as-query pairs from the IDs' network",
                  _settings(r), self.run_retriever, ("data", "learn_ids"), typical.get("retriever", 0.0)),
            Stage("recommender", "train the recommender",
                  f"item-token recommender, preset {c.recommender_preset}, at most {s.max_epochs} epochs"
                  + (f" or {s.time_budget_s:.0f} s" if s.time_budget_s else ""),
                  _settings(s), self.run_recommender, ("data", "learn_ids"), typical.get("recommender", 0.0)),
            Stage("evaluate", "evaluate",
                  f"{c.dev_queries} + {c.eval_queries} titles through the retriever (validation picks its search "
                  "mode), validation and test users through the recommender (validation picks its ranking)",
                  {"eval_queries": c.eval_queries, "dev_queries": c.dev_queries, "seed": c.seed}, self.run_evaluate,
                  ("data", "retriever", "recommender"), typical.get("evaluate", 0.0)),
            Stage("export", "export the bundle",
                  f"ONNX graphs with the parity check on {c.parity_inputs} inputs per model, to {self.out_dir}",
                  {"parity_inputs": c.parity_inputs, "max_document_length": c.max_document_length, "seed": c.seed,
                   "indexer_int8": c.indexer_int8, "indexer_int8_min_agreement": c.indexer_int8_min_agreement},
                  self.run_export, ("data", "learn_ids", "retriever", "recommender", "evaluate"),
                  typical.get("export", 0.0), cache=False),
        ]

    # ----------------------------------------------------------------------------------------------
    # the stages: run(folder, resumed)

    def run_data(self, folder: Path, resumed: bool) -> None:
        c = self.config
        full = load_amazon()
        holdout = choose_holdout(popular_items(full, c.num_items), c.holdout_items, c.seed)
        dataset = beauty_subset(c.num_items, c.max_users, holdout, dataset=full)
        write_p5(dataset, folder)
        write_items_corpus(dataset, folder / "corpus.jsonl")
        written = write_holdout_documents(full, holdout, folder / "holdout.jsonl")
        (folder / "summary.json").write_text(json.dumps({
            "items": len(dataset.items), "users": len(dataset.sequences), "interactions": dataset.num_interactions,
            "holdout_items": written}, indent=1) + "\n", encoding="utf-8")

    def run_learn_ids(self, folder: Path, resumed: bool) -> None:
        for partial in folder.glob(".ids.partial-*"):  # a killed run's staging directory
            shutil.rmtree(partial, ignore_errors=True)
        overrides = list(self.ids_overrides)
        checkpoints = folder / "checkpoints"
        if self.ids_method == "lmindexer":
            overrides.append(f"checkpoint_dir={json.dumps(str(checkpoints))}")
        learn_ids(corpus=self.path("data", "corpus.jsonl"), method=self.ids_method, out_dir=self.ids_dir,
                  preset=self.ids_preset, overrides=overrides, overwrite=True)
        shutil.rmtree(checkpoints, ignore_errors=True)  # the IDs and the network are written: not needed again

    def run_retriever(self, folder: Path, resumed: bool) -> None:
        task = _retrieval_task(self.dataset(), 0, 0, self.config.seed)
        # finetune_task resumes from folder/model/checkpoint when an interrupted run left one
        finetune_task(task, load_id_source(self.ids_dir), self.retriever_config, folder / "model",
                      progress=self.progress)

    def run_recommender(self, folder: Path, resumed: bool) -> None:
        # fit resumes from folder/model/train/checkpoint.pt when an interrupted run left one
        fit(self.path("data", "items.jsonl"), self.path("data", "user_sequence.txt"), self.ids_dir,
            self.recommender_settings, folder / "model", progress=self.progress)

    def run_evaluate(self, folder: Path, resumed: bool) -> None:
        c = self.config
        evaluation: dict[str, Any] = {}
        task = _retrieval_task(self.dataset(), c.dev_queries, c.eval_queries, c.seed)
        if task.eval_sets:  # validation first: it chooses the weight the test split is scored with
            evaluation["retriever"] = evaluate_task(task, self.path("retriever", "model"), splits=tuple(task.eval_sets),
                                                    max_queries=0, progress=self.progress)
        # validation chooses the recommender's default mode and hybrid weight (also without eval_queries); the
        # figures go to recommender/model/eval/metrics.json, where the export reads them
        evaluation["recommender"] = evaluate_model(self.path("recommender", "model"),
                                                   splits=("valid", "test") if c.eval_queries else ("valid",),
                                                   max_users=c.eval_queries)
        (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=1) + "\n", encoding="utf-8")

    def run_export(self, folder: Path, resumed: bool) -> None:
        c = self.config
        rng = random.Random(c.seed)
        source = load_id_source(self.ids_dir)
        ids_record = json.loads((self.ids_dir / "run.json").read_text(encoding="utf-8"))
        evaluation: dict[str, Any] = {}
        evaluated = json.loads(self.path("evaluate", "evaluation.json").read_text(encoding="utf-8"))
        if "retriever" in evaluated:
            evaluation["retriever"] = evaluated["retriever"]
        _, retriever_cfg, retriever = load_finetuned(self.path("retriever", "model"))
        documents, ids, recommender, recommender_metrics, _ = load_recommender(self.path("recommender", "model"),
                                                                              c.parity_inputs, c.seed)
        evaluation["recommender"] = recommender_metrics
        if source.network_dir is not None:
            indexer = load_indexer_network(source.network_dir, retriever.config.counter_size,
                                           retriever_cfg.indexer_logit_temperature)
            indexer_note = "the LMIndexer indexer network"
        else:  # no indexer network (HC / rq-VAE): the retriever maps a document's text to its ID
            indexer = retriever
            indexer_note = f"the retriever (the {source.method} method has no indexer network)"
        # The indexer reads documents as learn-ids did (its max_length), else the demo's setting.
        document_length = source.document_length if source.network_dir is not None else c.max_document_length
        texts = [d.text for d in documents]
        titles = [str(d.metadata.get("title") or "") for d in documents]
        titles = [t for t in titles if t]
        parity = {"indexer": rng.sample(texts, min(c.parity_inputs, len(texts))),
                  "retriever": rng.sample(titles, min(c.parity_inputs, len(titles)))}
        tokenizer = load_tokenizer(retriever.config.encoder)
        models = {
            "indexer": BundleModel(indexer, parity["indexer"], document_length, beam_size=retriever_cfg.beam_size),
            "retriever": BundleModel(retriever, parity["retriever"], retriever_cfg.max_input_length,
                                     beam_size=retriever_cfg.beam_size,
                                     search=search_settings(evaluation.get("retriever", {}))),
        }
        summary = json.loads(self.path("data", "summary.json").read_text(encoding="utf-8"))
        training_config = {
            "demo": config_to_dict(c),
            "catalogue": summary,
            "ids": {"method": ids_record["method"], "preset": ids_record["preset"], "config": ids_record["config"],
                    "num_documents": ids_record["num_documents"], "figures": _id_figures(self.ids_dir)},
            "indexer": indexer_note,
            "retriever": config_to_dict(retriever_cfg),
            "recommender": config_to_dict(self.recommender_settings),
            "wall_seconds": dict(self.wall_seconds),
        }
        self.manifest = export_bundle(
            self.out_dir, models, documents, ids, tokenizer, encoder=retriever.config.encoder, evaluation=evaluation,
            training_config=training_config, overwrite=self.overwrite, indexer_int8=c.indexer_int8,
            indexer_int8_min_agreement=c.indexer_int8_min_agreement, recommender=recommender,
        )
        target = holdout_path(self.out_dir)
        if c.holdout_items:
            shutil.copyfile(self.path("data", "holdout.jsonl"), target)
            logger.info("%d held-out items written to %s (POST /index-documents documents)", summary["holdout_items"],
                        target)
        elif target.exists():
            target.unlink()  # a previous build's held-out items are in this bundle


def _id_figures(ids_dir: Path) -> dict[str, Any]:
    """The learned IDs' quality figures for the manifest (learn-ids' metrics.json): first-level AMI against the
    category labels, the collision figures, per level the codes used, perplexity and AMI, and the saved network's
    agreement with the written IDs (LMIndexer)."""
    metrics = json.loads((ids_dir / "metrics.json").read_text(encoding="utf-8"))
    levels = metrics.get("levels") or []
    method = metrics.get("method") or {}
    keep = ("level", "codebook_size", "codes_used", "perplexity", "prefixes", "ami")
    return {"ami_first_level": levels[0].get("ami") if levels else None,
            "collisions": {k: v for k, v in (metrics.get("collisions") or {}).items() if k != "group_size_histogram"},
            "levels": [{k: level.get(k) for k in keep} for level in levels],
            "final_network_agreement": method.get("final_network_agreement") if isinstance(method, dict) else None}


def build_demo(out_dir: Path, config: DemoConfig, overwrite: bool = False, keep_work: bool = False,
               progress: bool = True, fresh: bool = False) -> BundleManifest:
    """Build the demo bundle at `out_dir` in cached, resumable stages (module docstring); returns its manifest.

    fresh: remove the work directory first (start every stage from scratch)."""
    library_bars(progress)
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir} already exists and is not empty (use --overwrite to replace it)")
    work = work_dir(out_dir)
    with _exclusive(work):
        if fresh:
            for path in work.iterdir():
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.name != ".lock":
                    path.unlink()
        build = DemoBuild(out_dir, config, work, overwrite, progress)
        runner = StageRunner(work, build.stages())
        # the export records the wall seconds of the stages before it (cached ones: those of the build that
        # made them); the whole report is written into the manifest once the export is done
        runner.on_stage_end = lambda record: build.wall_seconds.__setitem__(record.name, round(record.seconds, 1))
        report = runner.run()
        assert build.manifest is not None
        manifest = replace(build.manifest, training_config={
            **build.manifest.training_config, "wall_seconds": report.wall_seconds(),
            "build": {"work_dir": str(work), "stages": report.actions(), "seconds": round(report.seconds, 1)}})
        write_manifest(out_dir, manifest)
    logger.info("build-demo done: %s", report.summary())
    if keep_work:
        logger.info("work files kept in %s", work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return manifest
