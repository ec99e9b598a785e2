"""A self-contained HTML report on the quality of learned semantic IDs (`lmindexer id-report`).

Inputs: a `learn-ids` output directory (ids.jsonl, run.json, metrics.json) and, for the label
plots, the corpus (found through run.json, or given) and a label field (`category` or a metadata
field). Every figure is a matplotlib PNG embedded as base64, so the HTML file stands alone.

Sections: per-level table (codes used, perplexity, prefixes, AMI, diff ratio); AMI per level;
documents per code for every level (rank-ordered, the shape shows posterior collapse or a long
tail); collision statistics; the paper's figure: for the largest first-level codes, the category
mix of their documents (stacked bars, one bar per code: pure bars = semantically coherent codes);
and the same inside the largest first-level code, one bar per second-level code.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from training.data.corpus import read_corpus_jsonl
from training.errors import UserInputError
from training.indexing.diagnostics import code_diagnostics
from training.indexing.id_table import read_ids_jsonl
from training.indexing.learning import label_values

logger = logging.getLogger(__name__)

TOP_CODES = 12  # bars in the per-code category figures
TOP_CATEGORIES = 16  # categories with their own colour (tab20 minus greys); the rest are "other"


@dataclass
class ReportInputs:
    """What the report is drawn from."""

    run_dir: Path
    run: dict[str, Any]
    doc_ids: tuple[str, ...]
    codes: np.ndarray  # (N, L) learned codes (the counter dropped)
    counters: np.ndarray  # (N,)
    labels: list[str | None] | None
    label_field: str | None
    corpus: Path | None


def load_inputs(run_dir: Path, label_field: str | None = None, corpus: Path | None = None) -> ReportInputs:
    """Read a learn-ids directory and, when a corpus is known, the labels of its documents."""
    run_dir = Path(run_dir)
    ids_path = run_dir / "ids.jsonl"
    if not ids_path.is_file():
        raise UserInputError(f"{run_dir} is not a learn-ids output directory (no ids.jsonl)")
    run: dict[str, Any] = {}
    if (run_dir / "run.json").is_file():
        with open(run_dir / "run.json", encoding="utf-8") as handle:
            run = json.load(handle)
    table = read_ids_jsonl(ids_path)
    label_field = label_field or run.get("labels")
    corpus = Path(corpus) if corpus else (Path(run["corpus"]) if run.get("corpus") else None)
    labels = None
    if label_field and corpus is not None:
        if not corpus.is_file():
            raise UserInputError(f"corpus {corpus} not found (pass --corpus)")
        labels = corpus_labels(corpus, table.doc_ids, label_field)
    elif label_field:
        logger.warning("no corpus known for %s: the label plots are left out", run_dir)
    return ReportInputs(
        run_dir,
        run,
        table.doc_ids,
        table.semantic_ids[:, :-1],
        table.semantic_ids[:, -1],
        labels,
        label_field if labels is not None else None,
        corpus,
    )


def corpus_labels(corpus: Path, doc_ids: Sequence[str], label_field: str) -> list[str | None] | None:
    """The label of each doc_id (None where missing) read from the corpus."""
    documents = read_corpus_jsonl(corpus)
    by_id = dict(zip((d.doc_id for d in documents), label_values(documents, label_field) or [], strict=False))
    if not by_id:
        raise UserInputError(f"{corpus}: no document has the label field {label_field!r}")
    return [by_id.get(doc_id) for doc_id in doc_ids]


def short_label(label: str, parts: int = 2) -> str:
    """The last `parts` components of a category path: 'Beauty,Makeup,Nails,Nail Polish' -> 'Nails > Nail Polish'."""
    pieces = [p.strip() for p in label.replace(" > ", ",").split(",") if p.strip()]
    return " > ".join(pieces[-parts:]) if pieces else label


def _png(fig: Figure) -> str:
    """A matplotlib figure as a base64 PNG data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_ami(levels: list[dict[str, Any]], label_field: str) -> Any:
    """Bar chart: AMI of the prefix c_1..c_t against the labels, per level."""
    fig = Figure(figsize=(1.6 + 1.3 * len(levels), 3.4))
    ax = fig.subplots()
    values = [lv.get("ami") or 0.0 for lv in levels]
    names = [f"level {lv['level'] + 1}\n({lv['prefixes']} prefixes)" for lv in levels]
    bars = ax.bar(names, values, color="#4C72B0")
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:.3f}",
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom",
            fontsize=9,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax.set_ylim(0, max([*values, 0.1]) * 1.18)
    ax.set_ylabel(f"AMI vs {label_field}")
    ax.set_title("AMI of the ID prefix up to each level")
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def figure_usage(codes: np.ndarray, codebook_sizes: Sequence[int]) -> Any:
    """Per level: documents per code, codes sorted by count (unused codes show as the empty tail)."""
    levels = codes.shape[1]
    fig = Figure(figsize=(4.2 * levels, 3.2))
    axes = fig.subplots(1, levels, squeeze=False)
    for level, ax in enumerate(axes[0]):
        size = int(codebook_sizes[level])
        counts = np.sort(np.bincount(codes[:, level], minlength=size))[::-1]
        ax.bar(np.arange(size), counts, width=1.0, color="#55A868")
        used = int((counts > 0).sum())
        ax.set_title(f"level {level + 1}: {used}/{size} codes used", fontsize=10)
        ax.set_xlabel("codes, by number of documents")
        ax.set_ylabel("documents")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def figure_collisions(histogram: dict[str, int]) -> Any:
    """Bar chart: how many distinct learned codes hold 1, 2, 3, ... documents."""
    sizes = sorted((int(s), c) for s, c in histogram.items())
    fig = Figure(figsize=(6.5, 3.0))
    ax = fig.subplots()
    ax.bar([s for s, _ in sizes], [c for _, c in sizes], color="#C44E52", width=0.8)
    ax.set_xlabel("documents sharing one learned code (collision group size)")
    ax.set_ylabel("groups")
    ax.set_yscale("log")
    ax.set_title("Collision groups (the counter level numbers the documents of a group)")
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def figure_category_mix(groups: np.ndarray, labels: Sequence[str | None], title: str, group_name: str) -> Any:
    """Stacked horizontal bars: for the TOP_CODES largest groups, the share of each category.

    groups: (N,) code of each document (rows of one selection); labels: (N,) their labels.
    The TOP_CATEGORIES most frequent categories among the shown groups get their own colour.
    """
    labelled = [(int(g), lab) for g, lab in zip(groups, labels, strict=True) if lab is not None]
    sizes = Counter(g for g, _ in labelled)
    shown = [g for g, _ in sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:TOP_CODES]]
    per_group = {g: Counter(lab for gg, lab in labelled if gg == g) for g in shown}
    overall = Counter()
    for counts in per_group.values():
        overall.update(counts)
    # tab20 without its two greys (grey means "other categories"): the dark shades go to the 8 most
    # frequent categories and the light ones to the next 8, so look-alike pairs are far apart.
    tab20 = colormaps["tab20"].colors
    palette = [tab20[i] for i in range(0, 20, 2) if i != 14] + [tab20[i] for i in range(1, 20, 2) if i != 15]
    top = [lab for lab, _ in overall.most_common(TOP_CATEGORIES)]
    colours = {lab: palette[i % len(palette)] for i, lab in enumerate(top)}
    fig = Figure(figsize=(11, 0.55 * len(shown) + 1.6))
    ax = fig.subplots()
    for row, g in enumerate(shown):
        total = sum(per_group[g].values())
        left = 0.0
        for lab in top:
            share = per_group[g].get(lab, 0) / total
            if share:
                ax.barh(row, share, left=left, color=colours[lab], edgecolor="white", linewidth=0.5)
                if share >= 0.08:
                    ax.text(left + share / 2, row, f"{share:.0%}", ha="center", va="center", fontsize=7, color="white")
            left += share
        other = 1.0 - left
        if other > 1e-9:
            ax.barh(row, other, left=left, color="#BBBBBB", edgecolor="white", linewidth=0.5)
    ax.set_yticks(range(len(shown)))
    # Each tick names the code and its dominant category, readable even where that category is grey.
    ticks = []
    for g in shown:
        label, count = per_group[g].most_common(1)[0]
        ticks.append(
            f"{group_name} {g}  (n={sizes[g]})\n{count / sum(per_group[g].values()):.0%} {short_label(label, 1)}"
        )
    ax.set_yticklabels(ticks, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.set_xlabel("share of the code's documents")
    ax.set_title(title, fontsize=11)
    handles = [Rectangle((0, 0), 1, 1, color=colours[lab]) for lab in top]
    handles.append(Rectangle((0, 0), 1, 1, color="#BBBBBB"))
    ax.legend(
        handles,
        [short_label(lab) for lab in top] + ["other categories"],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        title="category (last two levels)",
        title_fontsize=8,
    )
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1150px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } .note { color: #555; font-size: 0.9em; }
"""


def render_report(inputs: ReportInputs) -> str:
    """The report as one HTML string."""
    codes = inputs.codes
    run = inputs.run
    sizes = run.get("codebook_sizes") or [int(codes[:, t].max()) + 1 for t in range(codes.shape[1])]
    metrics = code_diagnostics(codes, sizes, labels=inputs.labels)
    levels = metrics["levels"]
    parts = [
        f"<h1>Semantic ID report: {html.escape(str(run.get('method', '?')))} on {len(inputs.doc_ids):,} documents</h1>"
    ]
    facts = [
        ["run directory", html.escape(str(inputs.run_dir))],
        ["method / preset", f"{_fmt(run.get('method'))} / {_fmt(run.get('preset'))}"],
        ["corpus", _fmt(str(inputs.corpus) if inputs.corpus else None)],
        ["learned levels L, codes per level K", f"{codes.shape[1]}, {', '.join(map(str, sizes))}"],
        ["counter size (largest counter + 1)", str(int(inputs.counters.max()) + 1)],
        [
            "labels",
            _fmt(inputs.label_field)
            + (
                f" ({metrics['distinct_labels']} distinct, {metrics['labelled_documents']:,} labelled documents)"
                if inputs.labels is not None
                else " (no label plots)"
            ),
        ],
        ["created", _fmt(run.get("created"))],
        ["wall time (learn + IDs)", _wall_time(inputs.run_dir)],
    ]
    parts.append(_table(facts, ["", ""]))

    parts.append("<h2>Per level</h2>")
    rows = [
        [
            f"level {lv['level'] + 1}",
            f"{lv['codes_used']}/{lv['codebook_size']}",
            _fmt(lv["usage"]),
            _fmt(lv["perplexity"], 1),
            str(lv["prefixes"]),
            str(lv["largest_prefix_group"]),
            _fmt(lv.get("ami")),
            _fmt(lv["diff_ratio"]),
        ]
        for lv in levels
    ]
    parts.append(
        _table(
            rows,
            [
                "level",
                "codes used",
                "usage",
                "perplexity",
                "prefixes",
                "largest prefix group",
                "AMI (prefix)",
                "diff ratio",
            ],
        )
    )
    parts.append(
        "<p class='note'>perplexity = exp(entropy) of the level's code histogram (K if uniform, 1 if "
        "collapsed). AMI is measured between the prefix c<sub>1</sub>..c<sub>t</sub> and the labels "
        "(level 1 = the paper's figure). diff ratio = distinct codes per document among documents "
        "sharing the previous prefix (1 = every sibling separated).</p>"
    )
    if inputs.labels is not None:
        parts.append(f"<img alt='AMI per level' src='{_png(figure_ami(levels, inputs.label_field or ''))}'>")

    parts.append("<h2>Code usage</h2>")
    parts.append(f"<img alt='code usage per level' src='{_png(figure_usage(codes, sizes))}'>")
    if run.get("method") == "hc":
        parts.append(
            "<p class='note'>HC pads paths shorter than the tree's depth with code 0, so code 0 of "
            "the deeper levels also holds every document whose leaf is higher up.</p>"
        )

    collisions = metrics["collisions"]
    parts.append("<h2>Collisions</h2>")
    parts.append(
        _table(
            [
                ["distinct learned codes", f"{collisions['distinct_codes']:,}"],
                ["documents sharing their learned code", f"{collisions['collision_rate']:.1%}"],
                ["collision groups (2+ documents)", f"{collisions['colliding_groups']:,}"],
                ["largest collision group", str(collisions["largest_collision_group"])],
            ],
            ["", ""],
        )
    )
    parts.append(f"<img alt='collision groups' src='{_png(figure_collisions(collisions['group_size_histogram']))}'>")

    if inputs.labels is not None:
        parts.append("<h2>Categories per first-level code</h2>")
        parts.append(
            "<p class='note'>Each bar is one of the largest first-level codes; its segments are the "
            "shares of its documents in each category. Bars dominated by one colour are "
            "semantically coherent codes.</p>"
        )
        fig = figure_category_mix(
            codes[:, 0], inputs.labels, f"Category mix of the {TOP_CODES} largest first-level codes", "code"
        )
        parts.append(f"<img alt='categories per first-level code' src='{_png(fig)}'>")
        if codes.shape[1] >= 2:
            first = int(np.bincount(codes[:, 0]).argmax())
            rows_in = np.nonzero(codes[:, 0] == first)[0]
            parts.append(f"<h2>Inside first-level code {first}: categories per second-level code</h2>")
            fig = figure_category_mix(
                codes[rows_in, 1],
                [inputs.labels[i] for i in rows_in],
                f"Documents with first-level code {first} (n={len(rows_in)}), by second-level code",
                f"{first} /",
            )
            parts.append(f"<img alt='categories per second-level code' src='{_png(fig)}'>")
    method_figures = _method_section(inputs.run_dir)
    if method_figures:
        parts.append("<h2>Method diagnostics</h2>" + method_figures)
    body = "\n".join(parts)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Semantic ID report</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


def _wall_time(run_dir: Path) -> str:
    """The total wall time learn-ids recorded in metrics.json, as text."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return "–"
    with open(path, encoding="utf-8") as handle:
        seconds = json.load(handle).get("wall_seconds", {}).get("total")
    return f"{seconds:.1f} s" if isinstance(seconds, int | float) else "–"


def _method_section(run_dir: Path) -> str:
    """The method's own figures from metrics.json: scalars as one table, lists of records (e.g. the
    per-level reconstruction accuracy, the training stages) as one table each. Loss histories stay out."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return ""
    with open(path, encoding="utf-8") as handle:
        method = json.load(handle).get("method", {})
    scalars: list[list[str]] = []
    tables: list[str] = []

    def is_scalar(value: Any) -> bool:
        return value is None or isinstance(value, int | float | str | bool)

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key != "history":
                    walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = [k for k in dict.fromkeys(k for v in value for k in v) if all(is_scalar(v.get(k)) for v in value)]
            rows = [[_fmt(v.get(c)) for c in columns] for v in value[:64]]
            tables.append(f"<h3>{html.escape(prefix)}</h3>" + _table(rows, columns))
        elif isinstance(value, list) and len(value) <= 8 and all(isinstance(v, int | float) for v in value):
            scalars.append([html.escape(prefix), ", ".join(_fmt(v) for v in value)])
        elif is_scalar(value):
            scalars.append([html.escape(prefix), _fmt(value)])

    walk("", method)
    return (_table(scalars, ["figure", "value"]) if scalars else "") + "".join(tables)


def write_report(
    run_dir: Path, out: Path | None = None, label_field: str | None = None, corpus: Path | None = None
) -> Path:
    """Render the report of a learn-ids directory to `out` (default DIR/report.html)."""
    inputs = load_inputs(run_dir, label_field, corpus)
    out = Path(out) if out else Path(run_dir) / "report.html"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_report(inputs), encoding="utf-8")
    tmp.replace(out)
    return out
