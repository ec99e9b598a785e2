"""bench_demo_quality against the tests' tiny bundle served for real (uvicorn on loopback), with category
labels and titles the test writes: the relevance rule on hand-made paths, the mode detection on hand-made
OpenAPI documents, and each figure checked against what the test computes itself from the same service
(the tiny bundle's retriever is random, so the test controls the labels, not the ranking)."""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.processes import ServiceProcess
from tests.service.tiny_bundle import cached_tiny_bundle

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_demo_quality", ROOT / "benchmarks" / "bench_demo_quality.py")
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # its dataclasses look their module up there
spec.loader.exec_module(bench)

API_KEY = "bench-demo-quality-test-key"
LIPSTICK = ["Beauty", "Makeup", "Lips", "Lipstick"]
SHAMPOO = [" Beauty", "Hair Care ", " Shampoos"]  # spaces: the rule strips them
ALL = ["Beauty", "All"]


def title_of(text: str) -> str:
    """The tiny bundle's texts read `title: w w w w, brand: b, category: beauty i`."""
    return text.removeprefix("title: ").split(", brand:")[0]


def paths_of(i: int) -> list[list[str]]:
    return [LIPSTICK if i % 2 == 0 else SHAMPOO, ALL]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the tiny bundle (graphs linked) whose documents carry a title and, except every third one,
    their categories; and an items file with every document's categories, 3 items the bundle lacks and one
    without a title."""
    source = cached_tiny_bundle()
    root = tmp_path_factory.mktemp("demo-quality")
    bundle = root / "bundle"
    bundle.mkdir()
    for entry in source.iterdir():
        if entry.name != "documents.jsonl":
            (bundle / entry.name).symlink_to(entry.resolve())
    documents = [json.loads(line) for line in (source / "documents.jsonl").read_text().splitlines() if line.strip()]
    items = []
    with open(bundle / "documents.jsonl", "w", encoding="utf-8") as f:
        for i, d in enumerate(documents):
            d["metadata"] = {"i": i, "title": title_of(d["text"])}
            if i % 3:
                d["metadata"]["categories"] = paths_of(i)
            f.write(json.dumps(d) + "\n")
            items.append({"asin": d["doc_id"], "title": title_of(d["text"]), "categories": paths_of(i)})
    items += [{"asin": f"X{j}", "title": f"not served {j}", "categories": [LIPSTICK]} for j in range(3)]
    items.append({"asin": documents[1]["doc_id"] + "-untitled", "categories": [ALL]})
    items_path = root / "items.jsonl"
    items_path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return {"bundle": bundle, "items": items_path, "documents": documents, "root": root}


@pytest.fixture(scope="module")
def service(labelled: dict) -> Iterator[ServiceProcess]:
    process = ServiceProcess(labelled["bundle"], labelled["root"] / "store.sqlite3",
                             env={"LMINDEXER_API_KEY": API_KEY, "LMINDEXER_LOG_LEVEL": "WARNING"})
    with process:
        yield process


@pytest.fixture
def client(service: ServiceProcess) -> Iterator:
    c = bench.ServiceClient(service.url, API_KEY)
    yield c
    c.close()


def top10(url: str, query: str) -> list[str]:
    response = httpx.post(f"{url}/search", json={"query": query, "k": 10}, timeout=30)
    assert response.status_code == 200, response.text
    return [hit["doc_id"] for hit in response.json()["results"]]


def index_of(doc_id: str) -> int:
    return int(doc_id.removeprefix("new-").removeprefix("D"))


def test_relevance_rule_on_hand_made_paths(tmp_path: Path):
    path = ("Beauty", "Skin Care", "Face", "Cleansers")
    assert bench.ends_with(path, ("Cleansers",))
    assert bench.ends_with(path, ("Face", "Cleansers"))
    assert bench.ends_with(path, (" Face ", "Cleansers "))  # stripped
    assert bench.ends_with(path, path)
    assert not bench.ends_with(path, ("Skin Care", "Cleansers"))  # a suffix is consecutive components
    assert not bench.ends_with(path, ("Face",))  # must END the path
    assert not bench.ends_with(path, ("cleansers",))  # case-sensitive
    assert not bench.ends_with(path, ("Washes & Cleansers",)) and not bench.ends_with(path, ("ansers",))  # whole
    assert not bench.ends_with(("Cleansers",), ("Face", "Cleansers"))  # longer than the path
    other = ("Beauty", "Makeup", "Lips", "Lipstick")
    assert bench.is_relevant([path, other], [("Mascara",), ("Lips", "Lipstick")])
    assert not bench.is_relevant([path, other], [("Mascara",)])
    assert not bench.is_relevant([], [("Mascara",)])
    assert bench.parse_suffix(" Face >Cleansers ") == ("Face", "Cleansers")
    with pytest.raises(ValueError):
        bench.parse_suffix("Face > ")

    queries = tmp_path / "q.tsv"
    queries.write_text("# comment\n\nface wash\tFace > Cleansers | Cleansers > Washes\nlipstick\tLipstick\n")
    parsed = bench.read_queries(queries)
    assert [(q.text, q.suffixes, q.line) for q in parsed] == [
        ("face wash", (("Face", "Cleansers"), ("Cleansers", "Washes")), 3), ("lipstick", (("Lipstick",),), 4)]
    queries.write_text("no tab here\n")
    with pytest.raises(bench.BenchmarkError, match=r"q\.tsv:1"):
        bench.read_queries(queries)
    # The committed query set parses: at least 50 queries (issue 18).
    assert len(bench.read_queries(bench.QUERIES_FILE)) >= 50


def test_search_modes_from_openapi(client):
    def spec(mode_schema: dict | None, components: dict | None = None) -> dict:
        properties = {"query": {"type": "string"}, **({"mode": mode_schema} if mode_schema else {})}
        return {"paths": {"/search": {"post": {"requestBody": {"content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/SearchRequest"}}}}}}},
            "components": {"schemas": {"SearchRequest": {"properties": properties}, **(components or {})}}}

    assert bench.search_modes(spec(None))["modes"] == []
    assert bench.search_modes(spec(None))["mode_field"] is False
    by_ref = spec({"anyOf": [{"$ref": "#/components/schemas/SearchMode"}, {"type": "null"}]},
                  {"SearchMode": {"enum": ["generative", "hybrid"], "type": "string"}})
    assert bench.search_modes(by_ref)["modes"] == ["generative", "hybrid"]
    literal = spec({"anyOf": [{"enum": ["hybrid", "generative", "dense"], "type": "string"}, {"type": "null"}]})
    assert bench.search_modes(literal)["modes"] == ["hybrid", "generative", "dense"]
    plain = bench.search_modes(spec({"anyOf": [{"type": "string"}, {"type": "null"}]}))
    assert plain["mode_field"] is True and plain["modes"] == list(bench.DOCUMENTED_SEARCH_MODES)
    # The service's own document: modes only when its /search body has a `mode` field.
    served = client.get_json("/openapi.json")
    found = bench.search_modes(served)
    body = served["components"]["schemas"]["SearchRequest"]["properties"]
    assert found["mode_field"] == ("mode" in body) and bool(found["modes"]) == ("mode" in body)


def test_category_precision_against_the_served_top_10(client, labelled, service, tmp_path):
    queries = tmp_path / "queries.tsv"
    queries.write_text("lipstick red\tAll\n"                      # every document: 1.0
                       "matte mascara\tMascara\n"                 # none: 0.0
                       "glossy lipstick\tMakeup > Lipstick\n"     # not a suffix of any path: 0.0
                       "rose lipstick\tLips > Lipstick\n"         # the even documents
                       "argan shampoo\tLipstick | Hair Care > Shampoos\n")  # every document (either): 1.0
    parsed = bench.read_queries(queries)
    lookup = bench.CategoryLookup(bench.read_items(labelled["items"]))
    rows = bench.category_precision(client, parsed, None, lookup, workers=3)
    per_query = {q["query"]: q for q in rows["per_query"]}
    assert rows["num_queries"] == 5
    for q in rows["per_query"]:
        assert q["returned"] == 10 and q["top"] == top10(service.url, q["query"])
    assert per_query["lipstick red"]["precision"] == 1.0
    assert per_query["matte mascara"]["precision"] == 0.0 and per_query["matte mascara"]["relevant_ranks"] == []
    assert per_query["glossy lipstick"]["precision"] == 0.0
    even = [index_of(d) % 2 == 0 for d in per_query["rose lipstick"]["top"]]
    assert per_query["rose lipstick"]["precision"] == sum(even) / 10
    assert per_query["rose lipstick"]["relevant_ranks"] == [r + 1 for r, e in enumerate(even) if e]
    assert per_query["argan shampoo"]["precision"] == 1.0
    assert rows["mean"] == pytest.approx((2 + sum(even) / 10) / 5)
    # Every third document is served without categories: those came from the items file.
    served_without = sum(index_of(d) % 3 == 0 for q in rows["per_query"] for d in q["top"])
    assert lookup.sources == {"items_file": served_without, "served_metadata": 50 - served_without}
    assert 0 < served_without < 50
    # Without an items file they are never relevant.
    alone = bench.CategoryLookup(None)
    every = bench.category_precision(client, parsed[:1], None, alone)["per_query"][0]
    assert every["precision"] == sum(index_of(d) % 3 != 0 for d in every["top"]) / 10
    assert alone.sources["none"] == sum(index_of(d) % 3 == 0 for d in every["top"])


def test_title_sample_and_title_hits(client, labelled, service):
    items = bench.read_items(labelled["items"])
    sample, stats = bench.served_sample(client, items, 20, seed=18, workers=3)
    assert len(sample) == 20 and stats["size"] == 20 and stats["checked"] >= 20
    assert stats["items_without_title"] == 1 and stats["items_with_title"] == 303
    assert all(item.doc_id.startswith("D") and served["doc_id"] == item.doc_id for item, served in sample)
    again, _ = bench.served_sample(client, items, 20, seed=18)
    assert [i.doc_id for i, _ in again] == [i.doc_id for i, _ in sample]  # seeded
    assert [i.doc_id for i, _ in bench.served_sample(client, items, 20, seed=19)[0]] != [i.doc_id for i, _ in sample]
    # All 300 served titled items, asked for more: every one, and a warning-sized sample, not an error.
    everything, stats = bench.served_sample(client, items, 400, seed=18)
    assert len(everything) == 300 and stats["checked"] == 303

    targets = [(item.doc_id, str(item.title)) for item, _ in sample]
    row = bench.title_hits(client, targets, None, workers=3)
    expected = [doc_id in top10(service.url, title) for doc_id, title in targets]
    assert row["num_items"] == 20 and row["hits"] == sum(expected)
    assert row["hit_at_10"] == round(sum(expected) / 20, 4)
    assert [m["doc_id"] for m in row["misses"]] == [d for (d, _), hit in zip(targets, expected, strict=True) if not hit]
    # Targets whose answer the test controls: the service's own first and tenth results, and an unknown id.
    first = top10(service.url, "vegan rose serum")
    controlled = [(first[0], "vegan rose serum"), (first[9], "vegan rose serum"), ("NOPE", "vegan rose serum")]
    row = bench.title_hits(client, controlled, None)
    assert (row["hits"], row["hit_at_10"], row["hit_at_1"]) == (2, round(2 / 3, 4), round(1 / 3, 4))
    assert row["misses"] == [{"doc_id": "NOPE", "title": "vegan rose serum"}]


def test_new_documents_twins_from_a_file_and_skipped(client, labelled, service, tmp_path):
    items = bench.read_items(labelled["items"])
    options = bench.Options(items=labelled["items"], sample_size=8, concurrency=3)
    part = bench.new_documents_part(client, options, items, [None])
    assert part["source"]["kind"] == "twins" and part["source"]["sample"]["seed"] == bench.SEED + 1
    assert part["indexing"]["statuses"] == {"created": 8} and part["without_title"] == 0
    (row,) = part["rows"]
    twins = [i.doc_id for i, _ in bench.served_sample(client, items, 8, bench.SEED + 1)[0]]
    for doc_id in twins:  # each twin's copy is in the service's store, same text and metadata
        new = httpx.get(f"{service.url}/documents/{urllib.parse.quote('new-' + doc_id)}", timeout=10).json()
        old = httpx.get(f"{service.url}/documents/{doc_id}", timeout=10).json()
        assert (new["text"], new["metadata"]) == (old["text"], old["metadata"])
    expected = ["new-" + d in top10(service.url, items[d].title) for d in twins]
    assert row["mode"] == "default" and row["hits"] == sum(expected) and row["num_items"] == 8
    assert row["hit_at_10"] == round(sum(expected) / 8, 4) and row["met"] == (sum(expected) / 8 >= 0.9)
    assert part["met"] == {"default": row["met"]} and part["target"] == 0.9

    known = labelled["documents"][4]
    lines = [{"doc_id": "holdout-1", "text": "title: shea cedar balm, brand: oud",
              "metadata": {"title": "shea cedar balm"}},
             {"doc_id": "holdout-2", "text": "title: lemon mint scrub", "metadata": {}},  # no title: not searched
             {"doc_id": known["doc_id"], "text": known["text"], "metadata": {"title": title_of(known["text"]), "i": 4}}]
    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text("".join(json.dumps(line) + "\n" for line in lines))
    options = bench.Options(items=labelled["items"], new_documents=holdout)
    part = bench.new_documents_part(client, options, items, [None])
    assert part["source"]["kind"] == "file" and part["source"]["served_before_indexing"] == 1
    assert part["indexing"]["statuses"] == {"created": 2, "metadata_updated": 1}
    assert part["without_title"] == 1 and part["rows"][0]["num_items"] == 2
    expected = ["holdout-1" in top10(service.url, "shea cedar balm"),
                known["doc_id"] in top10(service.url, title_of(known["text"]))]
    assert part["rows"][0]["hits"] == sum(expected)

    refused = bench.Options(allow_writes=False, writes_refused_reason="because")
    assert bench.new_documents_part(client, refused, items, [None]) == {"skipped": "because", "target": 0.9}


def test_main_serves_the_bundle_itself_and_writes_the_report(labelled, service, tmp_path, monkeypatch, capsys):
    queries = tmp_path / "queries.tsv"
    queries.write_text("lipstick red\tAll\nmatte mascara\tMascara\n")
    out = tmp_path / "out" / "quality.json"
    monkeypatch.chdir(tmp_path)  # a store in the working directory would show up here
    status = bench.main(["--bundle", str(labelled["bundle"]), "--queries", str(queries), "--items",
                         str(labelled["items"]), "--sample-size", "6", "--concurrency", "2", "--out", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "demo_quality" and report["machine"]["cpu_count"] >= 1
    assert "load_average_at_start" in report["machine"] and len(report["load_average_after"]) == 3
    assert report["server"]["started_by_benchmark"] is True and report["service"]["num_documents"] == 300
    assert report["targets"] == {"category_precision_at_10": 0.7, "title_hit_at_10": 0.9,
                                 "new_documents_hit_at_10": 0.9}
    labels = report["search_modes"]["rows"]
    assert labels[0] == "default" and len(labels) == 1 + len(report["search_modes"]["modes"])
    precision = report["category_precision_at_10"]
    assert precision["num_queries"] == 2 and [r["mode"] for r in precision["rows"]] == labels
    assert [q["precision"] for q in precision["rows"][0]["per_query"]] == [1.0, 0.0]
    assert precision["rows"][0]["mean"] == 0.5 and precision["met"]["default"] is False
    assert report["title_hit_at_10"]["sample"]["size"] == 6
    assert report["new_documents"]["source"]["kind"] == "twins"
    assert report["new_documents"]["indexing"]["statuses"] == {"created": 6}
    assert not (tmp_path / "var").exists()  # the store was a temporary one
    if report["plot"] is not None:
        assert out.with_suffix(".png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "category precision@10" in table and "title hit@10" in table and "new documents hit@10" in table

    # Against a running service without --allow-writes: no write, the part says why.
    before = httpx.get(f"{service.url}/info", timeout=10).json()["index_version"]
    status = bench.main(["--url", service.url, "--queries", str(queries), "--items", str(labelled["items"]),
                         "--sample-size", "3", "--out", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    assert "--allow-writes" in report["new_documents"]["skipped"]
    assert httpx.get(f"{service.url}/info", timeout=10).json()["index_version"] == before
    # A service that is not there: exit 1, the error in the JSON.
    assert bench.main(["--url", "http://127.0.0.1:9", "--queries", str(queries), "--out", str(out)]) == 1
    assert "error" in json.loads(out.read_text())


def test_a_mode_the_service_refuses_is_recorded_and_not_run(client, labelled, monkeypatch, tmp_path):
    queries = tmp_path / "queries.tsv"
    queries.write_text("lipstick red\tAll\n")
    monkeypatch.setattr(bench, "search_modes",
                        lambda openapi: {"mode_field": True, "modes": ["no-such-mode"], "source": "test"})
    options = bench.Options(queries=queries, items=labelled["items"], sample_size=3, allow_writes=False,
                            writes_refused_reason="test")
    report = bench.measure(client, options)
    assert report["search_modes"]["rows"] == ["default"]
    assert report["search_modes"]["refused"]["no-such-mode"].startswith("422")
    assert [r["mode"] for r in report["category_precision_at_10"]["rows"]] == ["default"]
    assert [r["mode"] for r in report["title_hit_at_10"]["rows"]] == ["default"]
    assert report["new_documents"]["skipped"] == "test"
