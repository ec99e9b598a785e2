// The web page of the lmindexer service: search, a document with its recommendations, the ID tree.
//
// Documents come from users (POST /index-documents): every value from the API goes into the page
// with textContent (or as a text node), never as markup, and links are built only from
// encodeURIComponent'd values behind a fixed "#/..." route. The server's Content-Security-Policy
// (script-src 'self') is the second line of defence.
//
// Routes (the URL hash, so the back button works):
//   #/                       home
//   #/search?q=TEXT&k=10     POST /search
//   #/doc/DOC_ID             GET /documents/DOC_ID, then POST /recommend {"history": [DOC_ID]}
//   #/ids/12/407             GET /ids/12/407 (the children of prefix 12, 407)

const TITLE_CHARS = 160;
const RECOMMENDATIONS = 10;
const TREE_SAMPLES = 3;
const TREE_CATEGORIES = 4;

const $ = (id) => document.getElementById(id);

/** An element with optional class and text; children may be nodes or strings (added as text). */
function el(tag, { className, text, href, title } = {}, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (href !== undefined) node.setAttribute("href", href);
  if (title !== undefined) node.title = String(title);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** GET (no body) or POST (JSON body) an API path; the parsed JSON, or ApiError with the error body's text. */
async function api(path, body) {
  const init = body === undefined
    ? { headers: { accept: "application/json" } }
    : { method: "POST", headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify(body) };
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : `HTTP ${response.status}`;
    throw new ApiError(message, response.status);
  }
  return data;
}

function setStatus(message, isError = false) {
  const status = $("status");
  status.textContent = message || "";
  status.classList.toggle("error", Boolean(isError));
}

/** metadata.title when it is a non-empty string, else the start of the text. */
function titleOf(document_) {
  const metadata = document_.metadata || {};
  const title = typeof metadata.title === "string" && metadata.title.trim() ? metadata.title.trim()
    : String(document_.text || "").split(/\s+/).join(" ");
  return title.length <= TITLE_CHARS ? title : `${title.slice(0, TITLE_CHARS - 1)}…`;
}

/** metadata.category, else the first path of metadata.categories, else "". */
function categoryOf(metadata) {
  if (!metadata) return "";
  if (typeof metadata.category === "string") return metadata.category;
  const categories = metadata.categories;
  if (typeof categories === "string") return categories;
  if (Array.isArray(categories) && categories.length) {
    const first = Array.isArray(categories[0]) ? categories[0] : categories;
    return first.filter((c) => typeof c === "string").join(",");
  }
  return "";
}

const showCategory = (category) => category.split(",").filter(Boolean).join(" › ");
const docHref = (docId) => `#/doc/${encodeURIComponent(docId)}`;
const treeHref = (prefix) => `#/ids/${prefix.map((c) => Number(c)).join("/")}`;

/** A semantic ID as code chips; each learned code links to the tree under the prefix it ends. */
function semanticIdNode(semanticId) {
  const codes = Array.isArray(semanticId) ? semanticId.map((c) => Number(c)) : [];
  const wrapper = el("span", { className: "sid", title: "semantic ID: learned codes, then the collision counter" });
  codes.forEach((code, level) => {
    if (level > 0) wrapper.append(el("span", { className: "sep", text: "·" }));
    const last = level === codes.length - 1;
    wrapper.append(last ? el("span", { className: "code counter", text: code })
      : el("a", { className: "code", text: code, href: treeHref(codes.slice(0, level + 1)),
                  title: `documents under ${codes.slice(0, level + 1).join(", ")}` }));
  });
  return wrapper;
}

/** One search or recommendation hit. */
function hitNode(hit) {
  const document_ = hit.document || { doc_id: hit.doc_id, text: "", metadata: {} };
  const category = categoryOf(document_.metadata);
  return el("li", { className: "hit" },
    el("a", { className: "hit-title", text: titleOf(document_), href: docHref(hit.doc_id) }),
    el("div", { className: "hit-meta" },
      el("span", { className: "score", text: `score ${Number(hit.score).toFixed(3)}`,
                   title: "higher is better. Generative ranking: the log-probability of this semantic ID (0 is the " +
                          "most likely). Hybrid search: (1 - w) * cosine of the text vectors + w * the ID's " +
                          "probability, at most 1 (README: what a search score means)" }),
      semanticIdNode(hit.semantic_id),
      el("code", { className: "doc-id", text: hit.doc_id })),
    category ? el("div", { className: "category", text: showCategory(category) }) : null);
}

function show(viewId) {
  for (const id of ["home-view", "search-view", "doc-view", "tree-view"]) $(id).hidden = id !== viewId;
}

let lastSearchHash = "#/";

async function runSearch(query, k) {
  show("search-view");
  $("query").value = query;
  $("k").value = String(k);
  $("search-heading").textContent = `Results for “${query}”`;
  const list = $("results");
  list.replaceChildren();
  setStatus("Searching…");
  const answer = await api("/search", { query, k });
  list.replaceChildren(...answer.results.map(hitNode));
  const warnings = (answer.warnings || []).join("; ");
  setStatus(`${answer.results.length} results in ${Number(answer.took_ms).toFixed(0)} ms`
    + `${answer.cached ? " (cached)" : ""}${warnings ? ` — ${warnings}` : ""}`);
}

function metadataRows(metadata) {
  return Object.entries(metadata || {}).map(([key, value]) => el("tr", {},
    el("th", { text: key }),
    el("td", { text: typeof value === "string" ? value : JSON.stringify(value) })));
}

async function showDocument(docId) {
  show("doc-view");
  $("doc-back").setAttribute("href", lastSearchHash);
  for (const id of ["doc-title", "doc-id", "doc-category", "doc-text", "rec-status"]) $(id).textContent = "";
  $("doc-sid").replaceChildren();
  $("doc-metadata").tBodies[0].replaceChildren();
  $("recommendations").replaceChildren();
  setStatus("Loading…");
  const document_ = await api(`/documents/${encodeURIComponent(docId)}`);
  $("doc-title").textContent = titleOf(document_);
  $("doc-id").textContent = document_.doc_id;
  $("doc-sid").replaceChildren(semanticIdNode(document_.semantic_id));
  $("doc-category").textContent = showCategory(categoryOf(document_.metadata)) || "—";
  $("doc-text").textContent = document_.text;
  $("doc-metadata").tBodies[0].replaceChildren(...metadataRows(document_.metadata));
  setStatus("");
  $("rec-status").textContent = "Asking the recommender…";
  try {
    const answer = await api("/recommend", { history: [document_.doc_id], k: RECOMMENDATIONS });
    // The item itself is not a "next" item: drop it if the model proposes it.
    const hits = answer.results.filter((hit) => hit.doc_id !== document_.doc_id);
    $("recommendations").replaceChildren(...hits.map(hitNode));
    $("rec-status").textContent = hits.length ? `${hits.length} items, most likely first` : "No recommendation.";
  } catch (error) {
    $("rec-status").textContent = `No recommendations: ${error.message}`;
  }
}

/** A category mix as a list of labelled bars. */
function mixNodes(categories) {
  return categories.map((share) => {
    const bar = el("span", { className: "bar" });
    bar.style.width = `${Math.round(100 * Number(share.share))}%`; // CSSOM: allowed under style-src 'self'
    return el("li", { title: `${share.num_documents} documents` },
      el("span", { className: "bar-track" }, bar),
      el("span", { className: "share", text: `${Math.round(100 * Number(share.share))}%` }),
      el("span", { className: "label", text: showCategory(String(share.category)) }));
  });
}

async function showTree(prefix) {
  show("tree-view");
  const path = $("tree-path");
  const body = $("tree-children").tBodies[0];
  body.replaceChildren();
  $("tree-categories").replaceChildren();
  $("tree-summary").textContent = "";
  path.replaceChildren(el("a", { text: "root", href: treeHref([]) }),
    ...prefix.flatMap((code, i) => [" › ", el("a", { text: code, href: treeHref(prefix.slice(0, i + 1)) })]));
  setStatus("Loading…");
  const node = await api(`/ids/${prefix.join("/")}?samples=${TREE_SAMPLES}&top_categories=${TREE_CATEGORIES}`);
  const where = node.prefix.length ? `under prefix ${node.prefix.join(" · ")}` : "in the index";
  const what = node.level_kind === "counter"
    ? "the last level is the collision counter: one document per code"
    : `level ${node.level + 1} of ${node.num_levels}: ${node.num_children} of ${node.codebook_size} codes used`;
  $("tree-summary").textContent = `${node.num_documents} documents ${where}; ${what}.`;
  $("tree-categories").replaceChildren(...mixNodes(node.categories));
  body.replaceChildren(...node.children.map((child) => {
    const isDocument = node.level_kind === "counter" && child.samples.length === 1;
    const codeLink = isDocument
      ? el("a", { className: "child-link", text: child.code, href: docHref(child.samples[0].doc_id) })
      : el("a", { className: "child-link", text: child.code, href: treeHref(child.prefix) });
    return el("tr", {},
      el("td", { className: "code-cell" }, codeLink),
      el("td", { className: "count", text: child.num_documents }),
      el("td", {}, el("ul", { className: "mix" }, ...mixNodes(child.categories))),
      el("td", {}, el("ul", { className: "samples" }, ...child.samples.map((sample) => el("li", {},
        el("a", { text: sample.title, href: docHref(sample.doc_id) }))))));
  }));
  setStatus("");
}

async function route() {
  const hash = window.location.hash || "#/";
  try {
    if (hash.startsWith("#/search")) {
      lastSearchHash = hash;
      const params = new URLSearchParams(hash.slice(hash.indexOf("?") + 1));
      const query = params.get("q") || "";
      const k = Math.min(100, Math.max(1, Number(params.get("k")) || 10));
      if (query.trim()) await runSearch(query, k);
      else show("home-view");
    } else if (hash.startsWith("#/doc/")) {
      await showDocument(decodeURIComponent(hash.slice("#/doc/".length)));
    } else if (hash.startsWith("#/ids")) {
      const prefix = hash.slice("#/ids".length).split("/").filter(Boolean).map((c) => Number(c));
      if (prefix.some((c) => !Number.isInteger(c) || c < 0)) throw new ApiError("a prefix is codes joined by /", 422);
      await showTree(prefix);
    } else {
      show("home-view");
      setStatus("");
    }
  } catch (error) {
    setStatus(error.message || String(error), true);
  }
}

async function showInfo() {
  try {
    const info = await api("/info");
    $("info").textContent = `${info.num_documents} documents · index version ${info.index_version}`
      + ` · models: ${(info.models || []).join(", ")}`;
  } catch (error) {
    $("info").textContent = `service info unavailable: ${error.message}`;
  }
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) return;
  const hash = `#/search?q=${encodeURIComponent(query)}&k=${encodeURIComponent($("k").value)}`;
  if (window.location.hash === hash) route(); // same search again: hashchange would not fire
  else window.location.hash = hash;
});
window.addEventListener("hashchange", route);
route();
showInfo();
