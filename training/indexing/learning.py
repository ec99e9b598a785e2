"""The method-independent `learn-ids` pipeline and the contract every indexing method implements.

The contract
------------
An indexing method is a function

    learn_<method>_codes(documents: list[Document], config: <Method>Config, out_dir: Path) -> LearnedCodes

registered in `METHODS` as `name -> (module, config class name, function name)`; modules are
imported lazily so that `lmindexer learn-ids --method hc` never imports the LMIndexer model.
The function learns `L` levels of codes for `documents` (row `i` of `LearnedCodes.codes` belongs
to `documents[i]`), writes its checkpoint files (safetensors + a JSON config) under `out_dir`
and names them in `LearnedCodes.files` (paths relative to `out_dir`). It does *not* assign the
collision counter, write the ID table or compute the generic diagnostics: the pipeline below does
that the same way for every method.

The pipeline (`learn_ids`)
--------------------------
1. read the corpus (`training.data.corpus.read_corpus_jsonl`; a malformed file raises
   `DataFormatError` naming the file and line *before* anything is written);
2. build the method's config from the preset `training/configs/<method>-<preset>.toml` and
   `--set key=value` overrides;
3. run the method in a hidden staging directory next to `out_dir`;
4. append the collision counter (`training.indexing.id_table`), check uniqueness;
5. write `ids.jsonl`, `metrics.json` (`training.indexing.diagnostics`) and `run.json` (method,
   preset, config, corpus path, label field, L, K per level, counter size, files);
6. rename the staging directory to `out_dir`. A failure at any step removes the staging
   directory, so `out_dir` is either complete or absent (never half-written).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from training.config import config_to_dict, load_config, preset_path
from training.data.corpus import Document, read_corpus_jsonl
from training.errors import ConfigError, UserInputError
from training.indexing.id_table import assign_semantic_ids, write_ids_jsonl

logger = logging.getLogger(__name__)

IDS_FILE = "ids.jsonl"
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"


@dataclass
class LearnedCodes:
    """What an indexing method returns: learned codes (no counter yet) and its own figures.

    codes: (N, L) int64, row i = documents[i]; every value of column t is in [0, codebook_sizes[t]).
    codebook_sizes: K per learned level (length L).
    diagnostics: method-specific figures, e.g. {"levels": [{"reconstruction_accuracy": 0.41}, ...],
        "loss_history": [...]}; stored verbatim under "method" in metrics.json (JSON-serialisable).
    files: checkpoint files written under out_dir, relative paths, e.g.
        {"checkpoint": "model.safetensors", "config": "config.json"}.
    """

    codes: np.ndarray
    codebook_sizes: tuple[int, ...]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes, dtype=np.int64)
        if self.codes.ndim != 2:
            raise ValueError(f"codes must be (N, L), got shape {self.codes.shape}")
        if self.codes.shape[1] != len(self.codebook_sizes):
            raise ValueError(
                f"{self.codes.shape[1]} code columns but {len(self.codebook_sizes)} codebook sizes"
            )
        self.codebook_sizes = tuple(int(k) for k in self.codebook_sizes)
        if self.codes.size:
            low = self.codes.min(axis=0)
            high = self.codes.max(axis=0)
            for level, (lo, hi, k) in enumerate(zip(low, high, self.codebook_sizes, strict=True)):
                if lo < 0 or hi >= k:
                    raise ValueError(f"level {level}: codes span [{lo}, {hi}] outside [0, {k})")


# name -> (module, config class, function). Imported only when the method runs.
METHODS: dict[str, tuple[str, str, str]] = {
    "lmindexer": ("training.indexing.lmindexer", "LMIndexerConfig", "learn_lmindexer_codes"),
    "rqvae": ("training.indexing.rqvae", "RQVAEConfig", "learn_rqvae_codes"),
    "hc": ("training.indexing.hierarchical_kmeans", "HCConfig", "learn_hc_codes"),
}


def resolve_method(method: str) -> tuple[type, Any]:
    """The (config class, learn function) of a registered method."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    module_name, config_name, function_name = METHODS[method]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, function_name)


def load_method_config(method: str, preset: str | None = "quick", overrides: Iterable[str] = ()) -> Any:
    """The method's config from `training/configs/<method>-<preset>.toml` (or a TOML path) and overrides."""
    config_cls, _ = resolve_method(method)
    path = preset_path(method, preset) if preset else None
    return load_config(config_cls, path, overrides)


def label_values(documents: Sequence[Document], label_field: str | None) -> list[str | None] | None:
    """One label per document for AMI: `category`, or a metadata field; None where missing.

    Returns None when `label_field` is None or no document has the field.
    """
    if label_field is None:
        return None
    values: list[str | None] = []
    for doc in documents:
        if label_field == "category":
            value = doc.category
        else:
            value = (doc.metadata or {}).get(label_field)
        if isinstance(value, list | tuple):  # e.g. a category path stored as a list
            value = ",".join(map(str, value))
        values.append(None if value in (None, "") else str(value))
    return values if any(v is not None for v in values) else None


def default_label_field(documents: Sequence[Document]) -> str | None:
    """`category` when some document has one, else None (no AMI)."""
    return "category" if any(doc.category for doc in documents) else None


@contextlib.contextmanager
def staging_directory(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """A hidden directory beside `out_dir` that becomes `out_dir` only if the block succeeds.

    An existing non-empty `out_dir` is an error unless `overwrite`; then it is replaced only after
    the new one is complete. On any exception the staging directory is deleted.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserInputError(f"{out_dir} already exists and is not empty (use --overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    stage.chmod(0o755)  # mkdtemp makes it private (0700); the result is an ordinary output folder
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
    stage.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False)
        handle.write("\n")
    tmp.replace(path)


def _json_ready(value: Any) -> Any:
    """Numpy scalars and arrays to plain Python for json.dump."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def learn_ids(
    corpus: Path,
    method: str,
    out_dir: Path,
    preset: str | None = "quick",
    overrides: Iterable[str] = (),
    label_field: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline (see the module docstring); returns the contents of run.json."""
    # diagnostics imports scikit-learn (1-4 s, measured): deferred so that `lmindexer learn-ids --help` and
    # the argument checks, which import this module for METHODS, answer at once
    from training.indexing.diagnostics import code_diagnostics

    corpus = Path(corpus)
    config = load_method_config(method, preset, overrides)  # config errors before any work
    _, learn = resolve_method(method)
    documents = read_corpus_jsonl(corpus)
    if not documents:
        raise UserInputError(f"{corpus}: the corpus has no documents")
    label_field = label_field if label_field is not None else default_label_field(documents)
    labels = label_values(documents, label_field)
    if label_field is not None and labels is None:
        logger.warning("no document has the label field %r; AMI is not computed", label_field)

    with staging_directory(Path(out_dir), overwrite=overwrite) as stage:
        started = time.perf_counter()
        learned: LearnedCodes = learn(documents, config, stage)
        learn_seconds = time.perf_counter() - started
        if learned.codes.shape[0] != len(documents):
            raise RuntimeError(
                f"{method} returned {learned.codes.shape[0]} code rows for {len(documents)} documents"
            )
        table = assign_semantic_ids(learned.codes, [doc.doc_id for doc in documents])
        write_ids_jsonl(stage / IDS_FILE, table.doc_ids, table.semantic_ids)
        metrics = code_diagnostics(learned.codes, learned.codebook_sizes, labels=labels)
        metrics["wall_seconds"] = {
            "learn": round(learn_seconds, 3),
            "total": round(time.perf_counter() - started, 3),
        }
        metrics["method"] = _json_ready(learned.diagnostics)
        write_json_atomic(stage / METRICS_FILE, _json_ready(metrics))
        record = {
            "method": method,
            "preset": preset,
            "corpus": str(corpus.resolve()),
            "labels": label_field,
            "num_documents": len(documents),
            "num_levels": int(learned.codes.shape[1]),
            "codebook_sizes": list(learned.codebook_sizes),
            "counter_size": table.counter_size,
            "files": {"ids": IDS_FILE, "metrics": METRICS_FILE, **learned.files},
            "config": config_to_dict(config) if dataclasses.is_dataclass(config) else {},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_json_atomic(stage / RUN_FILE, _json_ready(record))
    logger.info(
        "wrote %s (%d documents, L=%d, K=%s, counter size %d)",
        out_dir,
        len(documents),
        record["num_levels"],
        record["codebook_sizes"],
        record["counter_size"],
    )
    return record
