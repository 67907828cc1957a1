import math

import numpy as np
import pytest

from lungsearch.metrics import (
    classification_metrics,
    inference_time_per_sample,
    intra_inter_distance,
    label_relevance,
    map_at_k,
    ndcg_at_k,
    rank_by_cosine,
    rank_by_hamming,
    retrieval_prf,
    silhouette,
)


def test_map_at_k_hand_computed():
    rel = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 1]])
    # q0: hits at 1, 3 -> (1/1 + 2/3)/2 ; q1 at k=3: nothing -> 0 ; q2: hits at 2, 3 -> (1/2 + 2/3)/2
    expected = ((1 + 2 / 3) / 2 + 0 + (1 / 2 + 2 / 3) / 2) / 3
    assert map_at_k(rel, 3) == pytest.approx(expected)
    # label-overlap relevance: any positive intersection counts as relevant
    assert map_at_k(rel * 3, 3) == pytest.approx(expected)
    assert map_at_k(np.ones((2, 5)), 5) == 1.0


def test_ndcg_hand_computed():
    rel = np.array([[2, 0, 1]])
    dcg = (2**2 - 1) / math.log2(2) + 0 + (2**1 - 1) / math.log2(4)
    idcg = (2**2 - 1) / math.log2(2) + (2**1 - 1) / math.log2(3)
    assert ndcg_at_k(rel) == pytest.approx(dcg / idcg)  # NDCG@ALL
    assert ndcg_at_k(rel, k=1) == pytest.approx(1.0)
    # the ideal from the whole database (a relevant item the ranking missed)
    assert ndcg_at_k(rel, k=3, ideal_rel=np.array([[2, 2, 1, 0]])) == pytest.approx(
        dcg / ((3 / 1) + (3 / math.log2(3)) + (1 / 2))
    )
    assert ndcg_at_k(np.zeros((1, 3))) == 0.0
    from sklearn.metrics import ndcg_score

    r = np.array([[3, 2, 0, 1, 2]])
    # paper 5 eq. 14 uses the exponential gain 2^rel - 1; sklearn uses the relevance as gain
    assert ndcg_at_k(r, k=3) == pytest.approx(ndcg_score(2.0**r - 1, np.array([[5, 4, 3, 2, 1]]), k=3))


def test_label_relevance():
    q = np.array([[1, 1, 0], [0, 0, 1]])
    d = np.array([[1, 0, 0], [1, 1, 1], [0, 0, 0]])
    assert label_relevance(q, d).tolist() == [[1, 2, 0], [0, 1, 0]]
    assert label_relevance(np.array([0, 1]), np.array([1, 1, 0])).tolist() == [[0, 0, 1], [1, 1, 0]]


def test_ranking_helpers():
    from lungsearch.models.hashing import pack_codes

    db = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    assert rank_by_cosine(np.array([[1.0, 0.1]]), db).tolist() == [[0, 2, 1]]
    codes = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [-1, -1, 1, 1, 1, 1, 1, 1], [-1] * 8])
    assert rank_by_hamming(pack_codes(codes[:1]), pack_codes(codes), k=2).tolist() == [[0, 1]]


def test_auc_and_classification_metrics_single_label():
    y = np.array([0, 0, 1, 1, 2])
    prob = np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8]])
    m = classification_metrics(y, prob, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    # class a one-vs-rest: positives scores {0.8, 0.4}, negatives {0.2, 0.3, 0.1}: all pairs ordered -> 1.0
    assert m["per_class"]["a"]["auc"] == pytest.approx(1.0)
    # class b: positives {0.7, 0.6}, negatives {0.1, 0.5, 0.1}: 6/6
    assert m["per_class"]["b"]["auc"] == pytest.approx(1.0)
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["a"]["recall"] == pytest.approx(
        0.5
    )
    assert m["recall_macro"] == m["sensitivity_macro"]
    # a hand AUC with ties and misorderings: positives {0.9, 0.4}, negatives {0.5, 0.4, 0.1}
    y2 = np.array([1, 1, 0, 0, 0])
    p2 = np.stack([1 - np.array([0.9, 0.4, 0.5, 0.4, 0.1]), np.array([0.9, 0.4, 0.5, 0.4, 0.1])], 1)
    # pairs: 0.9 beats all 3; 0.4 vs 0.5 loses, vs 0.4 ties (0.5), vs 0.1 wins -> (3 + 0 + 0.5 + 1)/6
    assert classification_metrics(y2, p2, ["n", "p"])["per_class"]["p"]["auc"] == pytest.approx(4.5 / 6)


def test_classification_metrics_multilabel_and_missing_class():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    prob = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.2], [0.7, 0.4, 0.3]])
    m = classification_metrics(y, prob, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(2 / 3)  # exact match
    assert math.isnan(m["per_class"]["c"]["auc"])  # no positives for c
    assert m["auc_macro"] == pytest.approx(np.mean([m["per_class"]["a"]["auc"], m["per_class"]["b"]["auc"]]))
    assert len(m["confusion_matrix"]) == 3


def test_retrieval_prf():
    out = retrieval_prf(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ["x", "y"])
    assert out["per_class"]["x"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert out["per_class"]["y"]["precision"] == pytest.approx(2 / 3)


def test_silhouette_and_paper_distances_hand_computed():
    emb = np.array([[0.0, 0.0], [0.0, 1.0], [4.0, 0.0], [4.0, 1.0]])
    lab = np.array([0, 0, 1, 1])
    # sample 0: a = 1, b = mean(4, sqrt(17)) ; s = (b - a)/b
    b0 = (4 + math.sqrt(17)) / 2
    assert silhouette(emb, lab) == pytest.approx((b0 - 1) / b0)
    d = intra_inter_distance(emb, lab)
    assert d["intra"] == pytest.approx(1.0)
    assert d["inter"] == pytest.approx(b0)
    assert d["silhouette_paper"] == pytest.approx((b0 - 1) / b0)
    assert math.isnan(silhouette(emb, np.zeros(4)))


def test_inference_time_per_sample():
    calls = []
    t = inference_time_per_sample(lambda: calls.append(1), batch_size=4, repeats=3, warmup=2)
    assert len(calls) == 5 and t >= 0
