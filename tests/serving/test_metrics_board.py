"""The metrics collector behind ``/metrics``: every replica's exposition once, stale ones dropped
(lungsearch.serving.metrics_board)."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lungsearch.serving.metrics import ServingMetrics
from lungsearch.serving.metrics_board import MetricsBoard, Publisher, start_publisher


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _requests(text: str) -> dict[tuple, float]:
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    return {(s.labels["deployment"], s.labels["method"]): s.value for s in fams["lungsearch_serve_requests"].samples}


def _replica(deployment: str, searches: int) -> str:
    m = ServingMetrics(deployment, ray_export=False, publish=False)
    for _ in range(searches):
        m.observe_request("Search", "OK", 0.01)
    return m.render()


def test_every_replica_counted_once_whatever_the_number_of_publications():
    board = MetricsBoard(stale_after_s=10, clock=Clock())
    for _ in range(3):  # republishing replaces a replica's entry, never adds to it
        board.put("lungsearch#Gateway#a", "lungsearch", "Gateway", _replica("gateway", 3), pid=11)
        board.put("lungsearch#Gateway#b", "lungsearch", "Gateway", _replica("gateway", 4), pid=12)
        board.put("lungsearch#Encoding#c", "lungsearch", "Encoding", _replica("encoding", 7), pid=13)
    got = _requests(board.exposition("lungsearch"))
    assert got == {("gateway", "Search"): 7.0, ("encoding", "Search"): 7.0}
    assert {r: m["pid"] for r, m in board.replicas("lungsearch").items()} == {
        "lungsearch#Encoding#c": 13,
        "lungsearch#Gateway#a": 11,
        "lungsearch#Gateway#b": 12,
    }


def test_a_replica_that_stops_publishing_is_dropped():
    clock = Clock()
    board = MetricsBoard(stale_after_s=10, clock=clock)
    board.put("a", "lungsearch", "Gateway", _replica("gateway", 3))
    clock.t += 6
    board.put("b", "lungsearch", "Gateway", _replica("gateway", 4))
    clock.t += 6  # a: 12 s old, b: 6 s
    assert list(board.texts("lungsearch")) == ["b"]
    assert _requests(board.exposition("lungsearch")) == {("gateway", "Search"): 4.0}
    board.forget("b")
    assert board.exposition("lungsearch") == ""


def test_a_fresh_scrape_waits_only_for_replicas_still_publishing():
    clock = Clock()
    board = MetricsBoard(stale_after_s=10, clock=clock)
    board.put("dead", "lungsearch", "Gateway", "", generation=0)
    clock.t += 5  # dead: silent for 5 s (still on the board, no longer publishing)
    board.put("a", "lungsearch", "Gateway", "", generation=0)
    board.put("b", "lungsearch", "Encoding", "", generation=0)
    g = board.ask_fresh()
    assert board.pending("lungsearch", g) == ["a", "b"]
    board.put("a", "lungsearch", "Gateway", "", generation=g)
    assert board.pending("lungsearch", g) == ["b"]
    board.put("b", "lungsearch", "Encoding", "", generation=g)
    assert board.pending("lungsearch", g) == []


def test_apps_are_kept_apart():
    board = MetricsBoard(clock=Clock())
    board.put("one#Gateway#a", "one", "Gateway", _replica("gateway", 1))
    board.put("two#Gateway#a", "two", "Gateway", _replica("gateway", 5))
    assert _requests(board.exposition("one")) == {("gateway", "Search"): 1.0}


def test_no_publisher_outside_a_serve_replica():
    assert start_publisher(lambda: "") is None
    assert ServingMetrics("gateway", ray_export=False).publisher is None


@pytest.mark.ray
def test_publishers_reach_the_collector_actor(ray_cluster):
    """Two publishers through the real detached actor: merged once, gone after stop + staleness."""
    import ray

    from lungsearch.serving import metrics_board

    pubs = [
        Publisher(
            f"test-app#Gateway#{i}", "test-app", "Gateway", lambda i=i: _replica("gateway", i + 1), interval_s=0.2
        )
        for i in range(2)
    ]
    for p in pubs:
        p.publish_once()
    assert _requests(metrics_board.graph_exposition("test-app")) == {("gateway", "Search"): 3.0}
    assert set(metrics_board.replica_texts("test-app")) == {"test-app#Gateway#0", "test-app#Gateway#1"}
    c = metrics_board.collector(create=False)
    ray.get(c.forget.remote("test-app#Gateway#0"))
    ray.get(c.forget.remote("test-app#Gateway#1"))
    assert metrics_board.graph_exposition("test-app") == ""


@pytest.mark.ray
def test_a_scrape_sees_what_was_counted_before_it(ray_cluster):
    """A publisher on a 60 s tick still shows a request counted just before the scrape: the scrape
    wakes it and waits for its fresh exposition."""
    import time

    from lungsearch.serving import metrics_board

    m = ServingMetrics("gateway", ray_export=False, publish=False)
    pub = metrics_board.Publisher("fresh-app#Gateway#x", "fresh-app", "Gateway", m.render, interval_s=60).start()
    try:
        deadline = time.monotonic() + 30
        while "fresh-app#Gateway#x" not in metrics_board.replica_texts("fresh-app"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for n in (1, 2, 3):
            m.observe_request("Search", "OK", 0.01)
            # exact at once: the 60 s tick cannot have published it, only the scrape's wake-up
            assert _requests(metrics_board.graph_exposition("fresh-app")) == {("gateway", "Search"): float(n)}
    finally:
        pub.stop()
