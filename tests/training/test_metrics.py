"""training.metrics against reference implementations on random inputs.

References: pytrec_eval (trec_eval's C code: ndcg_cut, map_cut, recall, success = hit,
recip_rank cut at k = mrr) per query and for the means, ir-measures for the means a second time
(its convention for queries that the run lacks), scikit-learn for AMI. Inputs include graded
gains, judged non-relevant pairs, tied scores, queries without any relevant document, queries
the run lacks, run-only queries and doc ids whose string order differs from their numeric order
(ties are broken by doc_id).
"""

from __future__ import annotations

import math

import ir_measures
import pytest
import pytrec_eval
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_mutual_info_score

from training.metrics import (
    METRIC_NAMES,
    adjusted_mutual_info,
    evaluate,
    id_level_ami,
    parse_metric,
    per_query,
)

# String order differs from "natural" order ("d10" < "d2"), and "D3" < "a" < "d0": ties must
# follow the string order, descending.
DOC_IDS = ["d0", "d1", "d2", "d10", "d11", "d20", "D3", "a", "zz", "d9", "x7", "x70"]
CUTOFFS = [1, 2, 3, 5, 10, 20]
EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A handful of score values makes ties frequent; free floats exercise the general case.
scores_strategy = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    st.floats(min_value=-10, max_value=10, allow_nan=False, allow_infinity=False, width=32),
)


@st.composite
def run_and_qrels(draw: st.DrawFn) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for index in range(draw(st.integers(min_value=1, max_value=5))):
        query_id = f"q{index}"
        # Gains 0..4: 0 is judged non-relevant, so some queries end up with no relevant document.
        qrels[query_id] = draw(st.dictionaries(st.sampled_from(DOC_IDS), st.integers(0, 4), min_size=1, max_size=8))
        ranking = draw(st.dictionaries(st.sampled_from(DOC_IDS), scores_strategy, max_size=len(DOC_IDS)))
        if ranking:  # an empty ranking = a query the run lacks
            run[query_id] = ranking
    if draw(st.booleans()):
        run["run-only"] = {"d0": 1.0, "d1": 0.5}
    return run, qrels


# ir-measures answers these through pytrec_eval. (Its RR@k comes from another provider that
# breaks score ties differently from trec_eval, so MRR@k is checked against trec_eval alone.)
IR_MEASURES = {"ndcg": ir_measures.nDCG, "map": ir_measures.AP, "recall": ir_measures.R, "hit": ir_measures.Success}


def trec_eval_values(run, qrels, metric: str, k: int) -> dict[str, float]:
    """Per-query values from pytrec_eval, for the queries of the qrels that the run holds.

    trec_eval has no cut-off reciprocal rank; RR@k is recip_rank where the first relevant
    document is within k (recip_rank >= 1/k) and 0 otherwise, which is its definition.
    """
    if metric == "mrr":
        reference = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
        return {q: (v["recip_rank"] if v["recip_rank"] >= 1 / k - 1e-12 else 0.0) for q, v in reference.items()}
    name = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "hit": "success"}[metric]
    reference = pytrec_eval.RelevanceEvaluator(qrels, {f"{name}.{k}"}).evaluate(run)
    return {q: v[f"{name}_{k}"] for q, v in reference.items()}


@pytest.mark.parametrize("metric", METRIC_NAMES)
@EXAMPLES
@given(case=run_and_qrels(), k=st.sampled_from(CUTOFFS))
def test_per_query_values_and_means_equal_trec_eval(metric: str, case, k: int) -> None:
    run, qrels = case
    reference = trec_eval_values(run, qrels, metric, k)
    name = f"{metric}@{k}"
    ours = per_query(run, qrels, [name])[name]
    assert set(ours) == set(qrels)
    for query_id, value in ours.items():
        if query_id in reference:
            assert value == pytest.approx(reference[query_id], abs=1e-6)
        else:  # trec_eval without -c skips queries the run lacks; with -c (and here) they score 0
            assert value == 0.0
    # trec_eval -c: the mean over every query of the qrels, 0 for those the run lacks.
    mean = evaluate(run, qrels, [name])[name]
    assert mean == pytest.approx(sum(reference.values()) / len(qrels), abs=1e-6)
    if metric in IR_MEASURES:  # a second reference, with its own averaging code
        measure = IR_MEASURES[metric] @ k
        assert mean == pytest.approx(ir_measures.calc_aggregate([measure], qrels, run)[measure], abs=1e-6)


def test_tie_order_is_trec_evals_doc_id_descending() -> None:
    # Three documents tied on score: trec_eval ranks them zz, d2, d10 (string order, descending).
    qrels = {"q": {"d10": 1}}
    run = {"q": {"d2": 1.0, "d10": 1.0, "zz": 1.0}}
    assert per_query(run, qrels, ["mrr@3"])["mrr@3"]["q"] == pytest.approx(1 / 3)
    assert per_query(run, qrels, ["hit@2"])["hit@2"]["q"] == 0.0


def test_graded_ndcg_by_hand() -> None:
    # Ranking: gain 1, gain 0, gain 3. Ideal: 3, 1 (the gain-0 judgment is not relevant).
    qrels = {"q": {"a": 1, "b": 0, "c": 3}}
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    dcg = 1 / math.log2(2) + 3 / math.log2(4)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    assert evaluate(run, qrels, ["ndcg@3"])["ndcg@3"] == pytest.approx(dcg / idcg)
    # map@2 divides by all 2 relevant documents although only one fits in the top 2.
    assert evaluate(run, qrels, ["map@2"])["map@2"] == pytest.approx((1 / 1) / 2)


def test_queries_without_relevant_documents_count_as_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"a": 0}, "q3": {"b": 2}}
    run = {"q1": {"a": 1.0}, "q2": {"a": 1.0}}  # q3 absent from the run
    assert evaluate(run, qrels, ["recall@1", "ndcg@1"]) == {"recall@1": pytest.approx(1 / 3),
                                                              "ndcg@1": pytest.approx(1 / 3)}


@pytest.mark.parametrize("bad", ["ndcg", "ndcg@0", "foo@10", "ndcg@x", ""])
def test_parse_metric_rejects_bad_names(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_metric(bad)


def test_parse_metric_canonical_name() -> None:
    assert str(parse_metric(" NDCG@10 ")) == "ndcg@10"
    assert list(evaluate({}, {"q": {"a": 1}}, ["MRR@5"])) == ["mrr@5"]


# --- AMI ---------------------------------------------------------------------------------

labels_strategy = st.integers(min_value=1, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 9), min_size=n, max_size=n),
        st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), min_size=n, max_size=n),
    )
)


@settings(max_examples=200, deadline=None)
@given(labels=labels_strategy)
def test_ami_equals_scikit_learn(labels: tuple[list[int], list[str]]) -> None:
    codes, categories = labels
    assert adjusted_mutual_info(codes, categories) == pytest.approx(
        adjusted_mutual_info_score(categories, codes), abs=1e-6)


def test_ami_special_cases_equal_scikit_learn() -> None:
    cases = [([0, 0, 0], ["a", "a", "a"]), ([0, 1, 2], ["a", "a", "a"]), ([1, 0], ["y", "x"]),
             ([0, 0, 1, 1], ["a", "a", "b", "b"]), ([0, 1, 0, 1], ["a", "a", "b", "b"])]
    for codes, categories in cases:
        assert adjusted_mutual_info(codes, categories) == pytest.approx(
            adjusted_mutual_info_score(categories, codes), abs=1e-12)


def test_ami_on_a_large_labeling_equals_scikit_learn() -> None:
    # Beauty-sized: 12,101 items, 256 codes, 225 categories, codes correlated with categories.
    import numpy as np

    rng = np.random.default_rng(7)
    categories = rng.integers(0, 225, size=12101)
    codes = np.where(rng.random(12101) < 0.5, categories % 256, rng.integers(0, 256, size=12101))
    assert adjusted_mutual_info(codes.tolist(), categories.tolist()) == pytest.approx(
        adjusted_mutual_info_score(categories, codes), abs=1e-9)


def test_id_level_ami_groups_by_prefix() -> None:
    ids = [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]
    labels = ["x", "y", "z", "w"]
    # Level 0 merges pairs; level 1 separates every document, matching the labels exactly.
    assert id_level_ami(ids, labels, level=1) == pytest.approx(1.0)
    assert id_level_ami(ids, labels, level=0) == pytest.approx(
        adjusted_mutual_info_score(labels, [0, 0, 1, 1]))
    with pytest.raises(ValueError):
        id_level_ami(ids, labels, level=3)
    with pytest.raises(ValueError):
        id_level_ami(ids, labels[:3], level=0)
