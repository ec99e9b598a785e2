"""The web page in a real headless browser (Debian's chromium driven by Playwright) against the real
service serving the trained demo bundle (``demo_bundle``: tests/integration/demo_bundle.py).

A user's path: search, open a result, see what customers bought next (POST /recommend), follow a
recommendation, walk one level of the semantic-ID tree. Then documents whose doc_id, title, text and
metadata carry HTML and script payloads: nothing executes, no element is created from them, no
Content-Security-Policy violation is even attempted, and each field shows exactly as written.

Nothing is downloaded: Playwright launches /usr/bin/chromium (``executable_path``), which .ci/prepare
installs. Set LMINDEXER_WEB_SCREENSHOTS=DIR to also write the screenshot the README shows
(``LMINDEXER_WEB_SCREENSHOTS=docs`` rewrites docs/web-page.png).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.processes import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
API_KEY = "browser-test-key"
TIMEOUT_MS = 60_000  # a loaded 2-core machine: the first search of a process takes seconds
QUERY = "nail polish"  # the demo bundle holds the 600 most popular Beauty items: many nail polishes

# Each payload sets window.__pwned if it ever runs; rendered as text it is just these characters.
IMG = "<img src=x onerror=\"window.__pwned='img'\">"
SCRIPT = "<script>window.__pwned='script'</script>"
SVG = "<svg onload=\"window.__pwned='svg'\"></svg>"
IFRAME = "\"><iframe src=\"javascript:window.__pwned='iframe'\"></iframe>"
PAYLOAD_TITLE = f"Lip gloss {IMG} {SCRIPT} & <b>bold</b>"
PAYLOAD_METADATA = {"title": PAYLOAD_TITLE, "category": f"Beauty,<i>Makeup</i>,{SVG}", "brand": IFRAME,
                    "price": 7.5}
# No '/' (a closing tag has one): a doc_id is one path segment of GET /documents/{doc_id}.
NEW_DOC_ID = "XSS-<b>&amp;\"one\"<img src=x onerror=\"window.__pwned='id'\">"


@pytest.fixture(scope="module")
def service(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("web")
    proc = ServiceProcess(demo_bundle, workdir / "store.sqlite3",
                          env={"LMINDEXER_API_KEY": API_KEY, "LMINDEXER_LOG_JSON": "false"})
    proc.start(timeout_s=180)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM} (Debian's package `chromium`; .ci/prepare installs it)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="no playwright (the dev extra: pip install -e '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        # Playwright passes --no-sandbox (its default chromiumSandbox=False), which root needs.
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class Watch:
    """What a page did that it must not: dialogs, uncaught errors, CSP violations, a set window.__pwned."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        # Runs before the page's own script, from the DevTools protocol (not subject to the page's CSP).
        page.add_init_script("""
            window.__violations = [];
            document.addEventListener('securitypolicyviolation',
                (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample}`));
        """)

    def assert_clean(self) -> None:
        assert self.page.evaluate("window.__pwned") is None, "a payload ran"
        assert self.dialogs == [] and self.errors == [], (self.dialogs, self.errors)
        assert self.page.evaluate("window.__violations") == [], "the page tried to run or load something it may not"
        # No element was made from a payload: main holds none of these tags at all.
        assert self.page.locator("main img, main script, main iframe, main svg, main b, main i").count() == 0


@pytest.fixture
def page(browser: Any, service: ServiceProcess) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    try:
        yield tab
    finally:
        context.close()


def _api(service: ServiceProcess, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, service.url + path, json=body, timeout=60,
                             headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200, response.text
    return response.json()


def _shown_title(document: dict[str, Any]) -> str:
    """The title the page shows: metadata.title, cut to 160 characters (app.js, TITLE_CHARS)."""
    title = document["metadata"]["title"].strip()
    return title if len(title) <= 160 else title[:159] + "…"


def _row_of_code(page: Any, code: int) -> Any:
    """The tree table's row whose code is exactly ``code``."""
    codes = [int(c) for c in page.locator("#tree-children .child-link").all_text_contents()]
    return page.locator("#tree-children tbody tr").nth(codes.index(code))


def _screenshot(page: Any, name: str, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=False)
    target = os.environ.get("LMINDEXER_WEB_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / name), full_page=False)


def test_search_open_a_result_follow_recommendations_and_walk_the_tree(page: Any, service: ServiceProcess,
                                                                        tmp_path: Path) -> None:
    watch = Watch(page)
    page.goto(service.url + "/")
    page.wait_for_selector("#info:not(:empty)")
    num_documents = _api(service, "GET", "/info")["num_documents"]
    assert page.text_content("#info").startswith(f"{num_documents} documents")

    # Search: the page shows what POST /search answers, in its order, with score and semantic ID.
    expected = _api(service, "POST", "/search", {"query": QUERY, "k": 10})["results"]
    page.fill("#query", QUERY)
    page.click("#search-button")
    page.wait_for_selector("#results li.hit")
    hits = page.locator("#results li.hit")
    assert hits.count() == len(expected) == 10
    for i, hit in enumerate(expected):
        item = hits.nth(i)
        assert item.locator(".hit-title").text_content() == _shown_title(hit["document"])
        assert item.locator(".doc-id").text_content() == hit["doc_id"]
        assert item.locator(".score").text_content() == f"score {hit['score']:.3f}"
        assert [int(c) for c in item.locator(".sid .code").all_text_contents()] == hit["semantic_id"]
    assert "#/search?q=nail%20polish" in page.url
    _screenshot(page, "web-page.png", tmp_path)

    # Open the first result: its fields, then the recommendations of POST /recommend for it.
    first = expected[0]
    with page.expect_response(lambda r: r.url.endswith("/recommend") and r.request.method == "POST") as answer:
        hits.nth(0).locator(".hit-title").click()
    assert answer.value.status == 200
    assert answer.value.request.post_data_json == {"history": [first["doc_id"]], "k": 10}
    page.wait_for_selector("#recommendations li.hit")
    assert page.text_content("#doc-title") == _shown_title(first["document"])
    assert page.text_content("#doc-id") == first["doc_id"]
    assert page.text_content("#doc-text") == first["document"]["text"]
    recommended = [h["doc_id"] for h in _api(service, "POST", "/recommend",
                                              {"history": [first["doc_id"]], "k": 10})["results"]
                   if h["doc_id"] != first["doc_id"]]
    shown = page.locator("#recommendations li.hit .doc-id").all_text_contents()
    assert shown == recommended and len(shown) >= 5
    assert "customers who bought this next bought" in page.text_content("#doc-view h3").lower()

    # Follow a recommendation: its own page, with its own recommendations.
    page.locator("#recommendations li.hit .hit-title").nth(0).click()
    page.wait_for_function("id => document.getElementById('doc-id').textContent === id", arg=recommended[0])
    page.wait_for_selector("#recommendations li.hit")

    # The ID tree: the root's codes as GET /ids/ lists them, then one level down.
    page.click("header nav a[href='#/ids/']")
    page.wait_for_selector("#tree-children tbody tr")
    root = _api(service, "GET", "/ids/?samples=3&top_categories=4")
    rows = page.locator("#tree-children tbody tr")
    assert rows.count() == root["num_children"] == len(root["children"])
    assert [int(c) for c in page.locator("#tree-children .child-link").all_text_contents()] == \
        [c["code"] for c in root["children"]]
    child = max(root["children"], key=lambda c: c["num_documents"])
    row = _row_of_code(page, child["code"])
    assert int(row.locator(".count").text_content()) == child["num_documents"]
    assert row.locator(".samples a").all_text_contents() == [s["title"] for s in child["samples"]]
    assert row.locator(".mix .label").count() == len(child["categories"]) >= 1
    row.locator(".child-link").click()
    page.wait_for_function("code => document.getElementById('tree-path').textContent.endsWith(code)",
                           arg=str(child["code"]))
    page.wait_for_selector("#tree-children tbody tr")
    below = _api(service, "GET", f"/ids/{child['code']}?samples=3&top_categories=4")
    assert page.locator("#tree-children tbody tr").count() == below["num_children"]
    assert page.text_content("#tree-summary").startswith(f"{child['num_documents']} documents under prefix "
                                                          f"{child['code']}")
    _screenshot(page, "web-page-tree.png", tmp_path)
    watch.assert_clean()


def test_documents_carrying_markup_and_scripts_show_as_text_and_run_nothing(page: Any,
                                                                              service: ServiceProcess) -> None:
    watch = Watch(page)
    # 1. A new document: payloads in its doc_id, text and metadata.
    text = f"title: {PAYLOAD_TITLE}, brand: {IFRAME}, category: Beauty, Makeup"
    created = _api(service, "POST", "/index-documents",
                   {"documents": [{"doc_id": NEW_DOC_ID, "text": text, "metadata": PAYLOAD_METADATA}]})
    semantic_id = created["documents"][0]["semantic_id"]
    # 2. A search hit of QUERY, re-indexed with payload metadata: a metadata-only change keeps its ID,
    # so it stays in the results and the result list itself must render the payloads.
    hit = _api(service, "POST", "/search", {"query": QUERY, "k": 10})["results"][0]
    changed = _api(service, "POST", "/index-documents",
                   {"documents": [{"doc_id": hit["doc_id"], "text": hit["document"]["text"],
                                   "metadata": PAYLOAD_METADATA}]})
    assert changed["documents"][0]["status"] == "metadata_updated"

    page.goto(service.url + "/")
    page.fill("#query", QUERY)
    page.click("#search-button")
    page.wait_for_selector("#results li.hit")
    shown_ids = page.locator("#results li.hit .doc-id").all_text_contents()
    item = page.locator("#results li.hit").nth(shown_ids.index(hit["doc_id"]))
    assert item.locator(".hit-title").text_content() == PAYLOAD_TITLE
    assert item.locator(".category").text_content() == f"Beauty › <i>Makeup</i> › {SVG}"

    # The new document's page: every field exactly as written.
    page.goto(f"{service.url}/#/doc/{urllib.parse.quote(NEW_DOC_ID, safe='')}")
    page.wait_for_function("id => document.getElementById('doc-id').textContent === id", arg=NEW_DOC_ID)
    assert page.text_content("#doc-title") == PAYLOAD_TITLE
    assert page.text_content("#doc-text") == text
    cells = dict(zip(page.locator("#doc-metadata th").all_text_contents(),
                     page.locator("#doc-metadata td").all_text_contents(), strict=True))
    assert cells == {"title": PAYLOAD_TITLE, "category": PAYLOAD_METADATA["category"], "brand": IFRAME,
                     "price": "7.5"}
    page.wait_for_function("""() => { const s = document.getElementById('rec-status').textContent;
                                      return s !== '' && !s.startsWith('Asking'); }""")

    # The tree under its learned prefix: its title as a sample, its category in the mix.
    page.goto(f"{service.url}/#/ids/{'/'.join(map(str, semantic_id[:-1]))}")
    page.wait_for_selector("#tree-children tbody tr")
    row = _row_of_code(page, semantic_id[-1])
    assert row.locator(".samples a").all_text_contents() == [PAYLOAD_TITLE]
    assert row.locator(".mix .label").all_text_contents() == [f"Beauty › <i>Makeup</i> › {SVG}"]
    watch.assert_clean()
