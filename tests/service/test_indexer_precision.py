"""The indexer's encoder precision (LMINDEXER_INDEXER_PRECISION): auto picks the bundle's int8 encoder
when it has one, fp32 otherwise; int8 on a bundle without one stops the start; /index-documents then
really runs the chosen graph (checked on a document whose codes differ between the two)."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.bundle import indexer_files, load_documents, load_manifest
from service.errors import BundleError
from service.model import OnnxModel, TextTokenizer
from service.settings import ServiceSettings
from training.downstream.export import write_int8_encoder


@pytest.fixture(scope="module")
def int8_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle plus indexer/encoder.int8.onnx, written by the export's own helper."""
    out = tmp_path_factory.mktemp("int8") / "bundle"
    shutil.copytree(bundle_dir, out)
    manifest = load_manifest(out)
    texts = load_documents(manifest).texts[:100]
    tokenizer = TextTokenizer(manifest.tokenizer, manifest.max_document_length)
    # Minimum 0: the tiny random model is not what is under test, the service's choice of graph is.
    fields = write_int8_encoder(out / "indexer", texts, tokenizer.encode, manifest.codebook_sizes, 0.0)
    raw = json.loads((out / "manifest.json").read_text())
    raw["models"]["indexer"].update({**fields, "encoder_int8": f"indexer/{fields['encoder_int8']}"})
    (out / "manifest.json").write_text(json.dumps(raw, indent=2))
    return out


@functools.cache
def _indexer(bundle: Path, precision: str) -> OnnxModel:
    manifest = load_manifest(bundle)
    files, _ = indexer_files(manifest, precision)
    return OnnxModel(files, TextTokenizer(manifest.tokenizer, manifest.max_document_length),
                     codebook_sizes=manifest.codebook_sizes, providers=["CPUExecutionProvider"], intra_op_threads=1)


def _greedy(bundle: Path, precision: str, texts: list[str]) -> np.ndarray:
    """(N, L) learned codes of `texts` through the bundle's indexer at `precision`, outside the service."""
    return _indexer(bundle, precision).greedy_codes(texts, 1)[0]


@pytest.fixture(scope="module")
def disputed_text(int8_bundle: Path) -> str:
    """A bundle text whose learned codes, the text alone in its batch, differ between fp32 and int8.

    Alone: int8 activations are quantised with one scale per batch, so a text's int8 codes may
    depend on its batch companions; the service indexes it alone in the tests below.
    """
    for text in load_documents(load_manifest(int8_bundle)).texts:
        if (_greedy(int8_bundle, "fp32", [text]) != _greedy(int8_bundle, "int8", [text])).any():
            return text
    raise AssertionError("the tiny bundle's int8 encoder agrees with fp32 everywhere: nothing tells them apart")


def _client(bundle: Path, tmp_path: Path, **settings: object) -> TestClient:
    return TestClient(create_app(ServiceSettings(bundle_dir=bundle, store_path=tmp_path / "store.sqlite3",
                                                 log_json=False, **settings)))  # type: ignore[arg-type]


def _indexed_prefix(client: TestClient, text: str) -> list[int]:
    response = client.post("/index-documents", json={"documents": [{"doc_id": "new-disputed", "text": text}]})
    assert response.status_code == 200, response.text
    document = response.json()["documents"][0]
    assert document["status"] == "created"
    return document["semantic_id"][:-1]


def test_export_helper_records_the_int8_agreement(int8_bundle: Path) -> None:
    entry = json.loads((int8_bundle / "manifest.json").read_text())["models"]["indexer"]
    assert entry["encoder_int8"] == "indexer/encoder.int8.onnx" and (int8_bundle / entry["encoder_int8"]).is_file()
    agreement = entry["int8_agreement"]
    assert agreement["inputs"] == 100 and len(agreement["per_level"]) == 2
    assert 0.0 <= agreement["prefix"] <= min(agreement["per_level"]) <= 1.0
    assert sorted(p.name for p in (int8_bundle / "indexer").iterdir()) == [
        "decoder_step.onnx", "encoder.int8.onnx", "encoder.onnx"]  # the losing candidate is gone


def test_auto_uses_the_int8_encoder_when_the_bundle_has_one(int8_bundle: Path, disputed_text: str,
                                                            tmp_path: Path) -> None:
    with _client(int8_bundle, tmp_path) as client:
        assert client.get("/info").json()["indexer_precision"] == "int8"
        prefix = _indexed_prefix(client, disputed_text)
        assert prefix == _greedy(int8_bundle, "int8", [disputed_text])[0].tolist()
        assert prefix != _greedy(int8_bundle, "fp32", [disputed_text])[0].tolist()
        # Search stays on the fp32 retriever and still answers valid documents.
        hits = client.post("/search", json={"query": "vegan lavender serum", "k": 3}).json()["results"]
        assert len(hits) == 3


def test_fp32_setting_keeps_the_fp32_encoder_of_an_int8_bundle(int8_bundle: Path, disputed_text: str,
                                                               tmp_path: Path) -> None:
    with _client(int8_bundle, tmp_path, indexer_precision="fp32") as client:
        assert client.get("/info").json()["indexer_precision"] == "fp32"
        assert _indexed_prefix(client, disputed_text) == _greedy(int8_bundle, "fp32", [disputed_text])[0].tolist()


def test_auto_is_fp32_on_a_bundle_without_int8_encoder(bundle_dir: Path, tmp_path: Path) -> None:
    assert load_manifest(bundle_dir).models["indexer"].encoder_int8 is None  # an older bundle: still valid
    with _client(bundle_dir, tmp_path) as client:
        assert client.get("/info").json()["indexer_precision"] == "fp32"
        assert len(_indexed_prefix(client, "a brand new rose serum")) == 2


def test_int8_on_a_bundle_without_int8_encoder_stops_the_start(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no int8 indexer encoder") as raised, \
            _client(bundle_dir, tmp_path, indexer_precision="int8"):
        pass
    assert "encoder_int8" in str(raised.value) and "LMINDEXER_INDEXER_PRECISION" in str(raised.value)


def test_int8_refusal_says_why_the_export_left_it_out(int8_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(int8_bundle, out)
    raw = json.loads((out / "manifest.json").read_text())
    del raw["models"]["indexer"]["encoder_int8"]
    raw["models"]["indexer"]["int8_skipped"] = "prefix agreement 0.5000 is below the minimum 0.9"
    (out / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"prefix agreement 0\.5000 is below the minimum"):
        indexer_files(load_manifest(out), "int8")
    assert indexer_files(load_manifest(out), "auto")[1] == "fp32"


def test_a_manifest_naming_a_missing_int8_encoder_is_refused(int8_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(int8_bundle, out)
    (out / "indexer" / "encoder.int8.onnx").unlink()
    with pytest.raises(BundleError, match=r"encoder\.int8\.onnx, which does not exist"):
        load_manifest(out)


def test_precision_setting_reads_the_environment_and_rejects_unknown_values(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LMINDEXER_INDEXER_PRECISION", "int8")
    assert ServiceSettings(bundle_dir=tmp_path).indexer_precision == "int8"
    monkeypatch.setenv("LMINDEXER_INDEXER_PRECISION", "int4")
    with pytest.raises(ValueError, match="indexer_precision"):
        ServiceSettings(bundle_dir=tmp_path)


def test_only_the_indexer_gets_the_int8_encoder(int8_bundle: Path) -> None:
    manifest = load_manifest(int8_bundle)
    files, precision = indexer_files(manifest, "auto")
    assert precision == "int8" and files.encoder == manifest.models["indexer"].encoder_int8
    assert files.decoder_step == manifest.models["indexer"].decoder_step  # one decoder for both precisions
    for name in ("retriever", "recommender"):
        assert manifest.models[name].encoder_int8 is None
