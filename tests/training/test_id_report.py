"""`lmindexer id-report` renders a self-contained HTML report for a small learn-ids run."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from lmindexer.cli import main
from tests.training.test_learn_ids import beauty_corpus

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """An HC quick run on 200 Beauty items (two learned levels, so both category figures appear)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMINDEXER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "lmindexer-cache"))
        root = tmp_path_factory.mktemp("report")
        corpus = beauty_corpus(root / "beauty200.jsonl")
        out = root / "hc"
        # 20 first-level codes hold ~10 documents each; with leaf size 8 the larger ones split again.
        assert main(["learn-ids", "--corpus", str(corpus), "--method", "hc", "--out", str(out),
                     "--set", "leaf_size=8"]) == 0
        assert json.loads((out / "run.json").read_text())["num_levels"] >= 2
        yield out


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([^']+)'", page)]


def test_report_has_every_plot_and_the_label_figures(run_dir, capsys):
    assert main(["id-report", str(run_dir)]) == 0
    report = run_dir / "report.html"
    assert f"wrote {report}" in capsys.readouterr().out
    page = report.read_text()
    pngs = images(page)
    # AMI per level, code usage, collision groups, categories per first-level and per second-level code.
    assert len(pngs) == 5 and all(p.startswith(PNG_MAGIC) and len(p) > 5000 for p in pngs)
    assert "Categories per first-level code" in page
    assert re.search(r"Inside first-level code \d+: categories per second-level code", page)
    assert "src='http" not in page and "<script" not in page  # self-contained
    run = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The per-level table shows the same AMI that learn-ids measured.
    assert f"{metrics['levels'][0]['ami']:.3f}" in page
    assert f"{run['num_documents']:,} documents" in page
    # The method's own figures (HC: its leaves) are in the report too.
    assert "<h2>Method diagnostics</h2>" in page and "<td>leaves</td>" in page
    # Collisions per level: the share of documents sharing their prefix, the last level's = the collision rate.
    assert "documents sharing the prefix" in page
    assert f"<td>{metrics['levels'][-1]['prefix_collision_rate']:.1%}</td>" in page
    assert f"{metrics['collisions']['collision_rate']:.1%}" == f"{metrics['levels'][-1]['prefix_collision_rate']:.1%}"
    assert "final-network agreement</td><td>– (no decoding network" in page


def test_report_shows_the_final_network_agreement(run_dir, tmp_path):
    """An LMIndexer run's metrics carry final_network_agreement (overall and per level): the report shows both."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["method"] = {"final_network_agreement": 0.9975, "final_network_agreement_documents": 200,
                         "levels": [{"final_network_agreement": 1.0}, {"final_network_agreement": 0.9975}]}
    (copy / "metrics.json").write_text(json.dumps(metrics))
    assert main(["id-report", str(copy)]) == 0
    page = (copy / "report.html").read_text()
    assert "99.75% of 200 documents (all levels); per level 100.00%, 99.75%" in page


def test_report_with_another_label_field_and_explicit_corpus(run_dir, tmp_path):
    out = tmp_path / "brand.html"
    run = json.loads((run_dir / "run.json").read_text())
    assert main(["id-report", str(run_dir), "--labels", "brand", "--corpus", run["corpus"], "--out", str(out)]) == 0
    page = out.read_text()
    assert "AMI vs brand" not in page  # labels are in the figure, not the HTML text
    assert "brand (" in page and len(images(page)) == 5


def test_report_without_ids_is_a_user_error(tmp_path, capsys):
    assert main(["id-report", str(tmp_path)]) == 2
    assert "no ids.jsonl" in capsys.readouterr().err
