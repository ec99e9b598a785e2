"""The indexer's encoder precision (LMINDEXER_INDEXER_PRECISION): auto picks the bundle's int8 encoder
when it has one, fp32 otherwise; int8 on a bundle without one stops the start; /index-documents then
really runs the chosen graph (checked on a document whose codes differ between the two)."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bundle import Bundle, BundleError, BundleManifest, OnnxRunner, TextTokenizer, write_manifest
from service.app import create_app
from service.components import choose_indexer_precision
from service.settings import ServiceSettings
from training.downstream.export import write_int8_encoder


@pytest.fixture(scope="module")
def int8_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle plus indexer/encoder.int8.onnx, written by the export's own helper."""
    out = tmp_path_factory.mktemp("int8") / "bundle"
    shutil.copytree(bundle_dir, out)
    bundle = Bundle.open(out)
    manifest = bundle.manifest
    texts = bundle.documents().texts[:100]
    tokenizer = TextTokenizer(bundle.path(manifest.tokenizer), manifest.models["indexer"].max_input_length)
    # Minimum 0: the tiny random model is not what is under test, the service's choice of graph is.
    int8 = write_int8_encoder(out / "indexer", texts, tokenizer, manifest.codebook_sizes, 0.0)
    indexer = dataclasses.replace(manifest.models["indexer"],
                                  int8_encoder=dataclasses.replace(int8, file=f"indexer/{int8.file}"))
    write_manifest(out, dataclasses.replace(manifest, models={**manifest.models, "indexer": indexer}))
    return out


@functools.cache
def _indexer(bundle: Path, precision: str) -> OnnxRunner:
    opened = Bundle.open(bundle)
    return OnnxRunner.for_model(opened, "indexer", int8=choose_indexer_precision(opened, precision) == "int8",
                                intra_op_threads=1)


def _greedy(bundle: Path, precision: str, texts: list[str]) -> np.ndarray:
    """(N, L) learned codes of `texts` through the bundle's indexer at `precision`, outside the service."""
    return _indexer(bundle, precision).greedy_codes(texts, 1)[0]


@pytest.fixture(scope="module")
def disputed_text(int8_bundle: Path) -> str:
    """A bundle text whose learned codes, the text alone in its batch, differ between fp32 and int8.

    Alone: int8 activations are quantised with one scale per batch, so a text's int8 codes may
    depend on its batch companions; the service indexes it alone in the tests below.
    """
    for text in Bundle.open(int8_bundle).documents().texts:
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
    entry = json.loads((int8_bundle / "manifest.json").read_text())["models"]["indexer"]["int8_encoder"]
    assert entry["file"] == "indexer/encoder.int8.onnx" and (int8_bundle / entry["file"]).is_file()
    assert entry["skipped"] is None
    agreement = entry["agreement"]
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
    assert Bundle.open(bundle_dir).manifest.models["indexer"].int8_encoder.file is None  # valid without one
    with _client(bundle_dir, tmp_path) as client:
        assert client.get("/info").json()["indexer_precision"] == "fp32"
        assert len(_indexed_prefix(client, "a brand new rose serum")) == 2


def test_int8_on_a_bundle_without_int8_encoder_stops_the_start(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no int8 indexer encoder") as raised, \
            _client(bundle_dir, tmp_path, indexer_precision="int8"):
        pass
    assert "int8_encoder" in str(raised.value) and "LMINDEXER_INDEXER_PRECISION" in str(raised.value)


def test_int8_refusal_says_why_the_export_left_it_out(int8_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(int8_bundle, out)
    raw = json.loads((out / "manifest.json").read_text())
    raw["models"]["indexer"]["int8_encoder"].update(file=None,
                                                    skipped="prefix agreement 0.5000 is below the minimum 0.9")
    (out / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"prefix agreement 0\.5000 is below the minimum"):
        choose_indexer_precision(Bundle.open(out), "int8")
    assert choose_indexer_precision(Bundle.open(out), "auto") == "fp32"


def test_a_manifest_naming_a_missing_int8_encoder_is_refused(int8_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(int8_bundle, out)
    (out / "indexer" / "encoder.int8.onnx").unlink()
    with pytest.raises(BundleError, match=r"encoder\.int8\.onnx, which does not exist"):
        Bundle.open(out)


def test_precision_setting_reads_the_environment_and_rejects_unknown_values(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LMINDEXER_INDEXER_PRECISION", "int8")
    assert ServiceSettings(bundle_dir=tmp_path).indexer_precision == "int8"
    monkeypatch.setenv("LMINDEXER_INDEXER_PRECISION", "int4")
    with pytest.raises(ValueError, match="indexer_precision"):
        ServiceSettings(bundle_dir=tmp_path)


def test_only_the_indexer_gets_the_int8_encoder(int8_bundle: Path) -> None:
    bundle = Bundle.open(int8_bundle)
    assert choose_indexer_precision(bundle, "auto") == "int8"
    assert bundle.manifest.models["indexer"].int8_encoder.file == "indexer/encoder.int8.onnx"
    assert bundle.manifest.models["retriever"].int8_encoder is None
    assert not hasattr(bundle.manifest.models["recommender"], "int8_encoder")  # it reads item vectors, not text
    with pytest.raises(BundleError, match="only the indexer"):  # the manifest refuses one elsewhere
        raw = json.loads((int8_bundle / "manifest.json").read_text())
        raw["models"]["retriever"]["int8_encoder"] = raw["models"]["indexer"]["int8_encoder"]
        BundleManifest.from_json(json.dumps(raw))
