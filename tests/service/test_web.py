"""The web page, its security headers, offline API docs, and GET /ids/{prefix} (the ID-tree browser).

The browser itself (search, a document with its recommendations, walking the tree, script payloads in
documents) is tested in a real headless Chromium: tests/integration/test_web_page_browser.py.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bundle import DocumentTable
from service.app import create_app
from service.errors import BadRequestError, NotFoundError
from service.id_tree import NO_CATEGORY, IdTree, category_of, parse_prefix, title_of
from service.index import IndexSnapshot
from service.settings import ServiceSettings
from service.store import StoredDocument
from trie import SemanticIdTrie


@pytest.fixture(scope="module")
def client(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    store = tmp_path_factory.mktemp("store") / "store.sqlite3"
    settings = ServiceSettings(bundle_dir=bundle_dir, store_path=store, log_json=False)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as c:
        yield c


def _bundle_ids(bundle_dir: Path) -> dict[str, tuple[int, ...]]:
    with (bundle_dir / "documents.jsonl").open() as lines:
        return {d["doc_id"]: tuple(d["semantic_id"]) for d in map(json.loads, lines) if d}


# ------------------------------------------------------------------------------------------- the page


def test_the_page_is_served_with_a_policy_that_forbids_inline_script(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in policy.split(";") if d.strip()}
    assert directives["script-src"] == ["'self'"]
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert directives["object-src"] == ["'none'"]
    assert page.headers["x-content-type-options"] == "nosniff"
    # Every script of the page is an external file of this origin (none inline, none from a CDN).
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page.text, flags=re.S)
    assert scripts, "the page has no script"
    for attributes, body in scripts:
        assert body.strip() == "", "inline script"
        source = re.search(r'src="([^"]+)"', attributes)
        assert source is not None and source.group(1).startswith("/static/")
    assert not re.search(r"""(src|href)=["']https?://""", page.text), "the page loads something from elsewhere"
    assert not re.search(r"\son[a-z]+=", page.text), "inline event handler"


def test_the_page_assets_are_served_from_the_package(client: TestClient) -> None:
    for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css"),
                       ("/static/favicon.svg", "image/svg+xml")):
        response = client.get(path)
        assert response.status_code == 200, path
        assert kind in response.headers["content-type"], (path, response.headers["content-type"])
        assert "script-src 'self'" in response.headers["content-security-policy"]
    script = client.get("/static/app.js").text
    assert ".innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script
    assert client.get("/static/nope.js").status_code == 404


def test_the_api_docs_work_offline(client: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200, path
        sources = re.findall(r"""(?:src|href)\s*[=:]\s*["']([^"']+\.(?:js|css|png))["']""", page.text)
        assert sources, f"{path} loads no script or style"
        for source in sources:
            assert not source.startswith(("http:", "https:", "//")), f"{path} loads {source} from elsewhere"
            asset = client.get(source)
            assert asset.status_code == 200, source
            assert len(asset.content) > 1000, source  # the real asset, not an empty placeholder
    assert client.get("/openapi.json").status_code == 200


# ------------------------------------------------------------------------------------- GET /ids/{prefix}


def test_the_root_lists_every_first_level_code_with_its_documents(client: TestClient, bundle_dir: Path) -> None:
    ids = _bundle_ids(bundle_dir)
    root = client.get("/ids/")
    assert root.status_code == 200, root.text
    node = root.json()
    assert node["prefix"] == [] and node["level"] == 0 and node["level_kind"] == "learned"
    assert node["num_documents"] == len(ids) == client.get("/info").json()["num_documents"]
    expected = Counter(sid[0] for sid in ids.values())
    assert [(c["code"], c["num_documents"]) for c in node["children"]] == sorted(expected.items())
    assert node["num_children"] == len(expected)
    first = node["children"][0]
    assert first["prefix"] == [first["code"]]
    assert 1 <= len(first["samples"]) <= 3
    for sample in first["samples"]:
        assert ids[sample["doc_id"]][0] == first["code"] and tuple(sample["semantic_id"]) == ids[sample["doc_id"]]
    assert client.get("/ids").json() == node  # without the slash: the same root


def test_walking_down_the_tree_ends_at_documents(client: TestClient, bundle_dir: Path) -> None:
    ids = _bundle_ids(bundle_dir)
    prefix: list[int] = []
    depth = len(next(iter(ids.values())))
    for level in range(depth):
        node = client.get("/ids/" + "/".join(map(str, prefix)), params={"samples": 20}).json()
        under = [sid for sid in ids.values() if list(sid[:level]) == prefix]
        assert node["level"] == level and node["num_documents"] == len(under)
        assert sum(c["num_documents"] for c in node["children"]) == len(under)
        biggest = max(node["children"], key=lambda c: c["num_documents"])
        if level == depth - 1:
            assert node["level_kind"] == "counter"
            for child in node["children"]:  # one document per counter
                assert child["num_documents"] == 1
                (sample,) = child["samples"]
                assert ids[sample["doc_id"]] == tuple(child["prefix"])
        else:
            assert node["level_kind"] == "learned"
        prefix = biggest["prefix"]


def test_category_mix_and_titles_come_from_the_documents_metadata(client: TestClient) -> None:
    documents = [{"doc_id": f"WEB-{i}", "text": f"title: matte red lipstick number {i}, brand: rouge",
                  "metadata": {"title": f"Matte red lipstick {i}", "category": "Beauty,Makeup,Lips,Lipstick"}}
                 for i in range(3)]
    written = client.post("/index-documents", json={"documents": documents})
    assert written.status_code == 200, written.text
    answer = written.json()
    for doc in answer["documents"]:
        sid = doc["semantic_id"]
        node = client.get("/ids/" + "/".join(map(str, sid[:-1])), params={"samples": 20}).json()
        assert node["index_version"] == answer["index_version"]  # the view follows the index version
        (child,) = [c for c in node["children"] if c["code"] == sid[-1]]
        (sample,) = child["samples"]
        assert sample["doc_id"] == doc["doc_id"] and sample["title"] == f"Matte red lipstick {doc['doc_id'][4:]}"
        assert child["categories"] == [{"category": "Beauty,Makeup,Lips,Lipstick", "num_documents": 1, "share": 1.0}]
        upper = client.get(f"/ids/{sid[0]}", params={"category_depth": 2, "top_categories": 50}).json()
        mix = {c["category"]: c["num_documents"] for c in upper["categories"]}
        assert mix.get("Beauty,Makeup", 0) >= 1  # truncated to two levels
        assert abs(sum(c["share"] for c in upper["categories"]) - 1.0) < 1e-9  # every category listed


@pytest.mark.parametrize(("prefix", "mentions"), [
    ("abc", "not a non-negative integer"), ("1/-2", "not a non-negative integer"), ("1//2", "not a non-negative"),
    ("99999", "out of range"), ("0/0/0", "at most 2"),
])
def test_a_malformed_prefix_is_a_422_naming_it(client: TestClient, prefix: str, mentions: str) -> None:
    response = client.get(f"/ids/{prefix}")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_type"] == "validation_error" and "prefix" in body["error"] and mentions in body["error"]


def test_an_unused_prefix_is_a_404_and_bad_options_are_422(client: TestClient, bundle_dir: Path) -> None:
    used = {sid[:2] for sid in _bundle_ids(bundle_dir).values()}
    first = client.get("/ids/").json()["children"][0]["code"]
    size = client.get(f"/ids/{first}").json()["codebook_size"]
    unused = [(first, c) for c in range(size) if (first, c) not in used]
    assert unused, "every code follows the first one: this test needs an unused prefix"
    response = client.get("/ids/{}/{}".format(*unused[0]))
    assert response.status_code == 404 and response.json()["error_type"] == "not_found"
    assert str(list(unused[0])) in response.json()["error"]
    assert client.get("/ids/", params={"samples": 21}).status_code == 422
    assert client.get("/ids/", params={"top_categories": 0}).status_code == 422


def test_the_openapi_document_describes_the_id_tree(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/ids/{prefix}"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/IdTreeNode")
    assert {"IdTreeNode", "IdChild", "CategoryShare", "SampleDocument"} <= set(spec["components"]["schemas"])
    assert "/" not in spec["paths"] and "/ids" not in spec["paths"]


# ------------------------------------------------------------------------------------ the view, in-process


def _snapshot() -> IndexSnapshot:
    ids = np.array([[0, 1, 0], [0, 1, 1], [0, 2, 0], [3, 0, 0], [3, 0, 1]], dtype=np.int64)
    metadata = [{"title": "Red lipstick", "category": "Beauty,Makeup,Lips"},
                {"categories": [["Beauty", "Makeup", "Lips"], ["Gifts"]]},
                {"category": "Beauty,Makeup,Eyes"},
                {"categories": ["Beauty", "Hair"]},
                {}]
    texts = ["title: red lipstick", "title: pink lip gloss, brand: x", "mascara", "shampoo", "  conditioner\n  "]
    table = DocumentTable([f"D{i}" for i in range(5)], texts, [json.dumps(m) for m in metadata], ids,
                          {f"D{i}": i for i in range(5)})
    return IndexSnapshot(SemanticIdTrie.build(ids, (4, 4, 2)), 0, table)


def test_the_view_counts_categories_per_code() -> None:
    tree = IdTree()
    snapshot = _snapshot()
    root = tree.node(snapshot, "", samples=1, top_categories=5, category_depth=None)
    assert [(c.code, c.num_documents) for c in root.children] == [(0, 3), (3, 2)]
    zero = root.children[0]
    assert [(s.category, s.num_documents) for s in zero.categories] == [("Beauty,Makeup,Lips", 2),
                                                                         ("Beauty,Makeup,Eyes", 1)]
    assert [s.title for s in zero.samples] == ["Red lipstick"]
    assert {s.category for s in root.children[1].categories} == {"Beauty,Hair", NO_CATEGORY}
    shallow = tree.node(snapshot, "", samples=0, top_categories=5, category_depth=2)
    assert [(s.category, s.num_documents) for s in shallow.children[0].categories] == [("Beauty,Makeup", 3)]
    assert shallow.children[0].samples == []
    leaves = tree.node(snapshot, "0/1", samples=3, top_categories=5, category_depth=None)
    assert leaves.level_kind == "counter" and [s.samples[0].doc_id for s in leaves.children] == ["D0", "D1"]
    assert leaves.children[1].samples[0].title == "title: pink lip gloss, brand: x"  # no title: the text
    with pytest.raises(NotFoundError):
        tree.node(snapshot, "1", samples=3, top_categories=5, category_depth=None)
    with pytest.raises(NotFoundError):
        tree.node(snapshot, "0/3", samples=3, top_categories=5, category_depth=None)


def test_the_view_follows_index_updates() -> None:
    tree = IdTree()
    snapshot = _snapshot()
    first = tree.view(snapshot)
    assert tree.view(snapshot) is first  # cached for the version
    added = StoredDocument("NEW", 5, "new text", {"title": "New", "category": "Tools"}, (1, 0, 0))
    changed = StoredDocument("D4", 4, "conditioner", {"category": "Beauty,Hair"}, (3, 0, 1))  # metadata only
    updated = IndexSnapshot(snapshot.trie.with_inserted(np.array([[1, 0, 0]]), np.array([5])), 1, snapshot.bundle,
                            {5: added, 4: changed}, {"NEW": 5, "D4": 4})
    root = tree.node(updated, "", samples=3, top_categories=5, category_depth=None)
    assert tree.view(updated) is not first and root.index_version == 1
    assert [(c.code, c.num_documents) for c in root.children] == [(0, 3), (1, 1), (3, 2)]
    assert root.children[1].samples[0].doc_id == "NEW" and root.children[1].categories[0].category == "Tools"
    assert [(s.category, s.num_documents) for s in root.children[2].categories] == [("Beauty,Hair", 2)]


def test_prefix_parsing_and_the_metadata_rules() -> None:
    assert parse_prefix("", (4, 4, 2)) == () and parse_prefix("/", (4, 4, 2)) == ()
    assert parse_prefix("3/1", (4, 4, 2)) == (3, 1) and parse_prefix("/3/1/", (4, 4, 2)) == (3, 1)
    for bad in ("4", "0/4", "0/0/0", "x", "1 ", "١"):
        with pytest.raises(BadRequestError):
            parse_prefix(bad, (4, 4, 2))
    assert category_of({"category": " A,B "}) == "A,B"
    assert category_of({"categories": "A; B"}) == "A; B"
    assert category_of({"categories": [[], ["x"]]}) == NO_CATEGORY
    assert category_of({"category": 3}) == NO_CATEGORY
    assert title_of("t " * 200, {})[-1] == "…" and len(title_of("t " * 200, {})) == 160
    assert title_of("text", {"title": "<b>kept as written</b>"}) == "<b>kept as written</b>"
