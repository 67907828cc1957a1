"""lungsearch.serving.health: the health service's status per service name, without Ray."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2

from lungsearch.serving.health import HEALTH_SERVICES, health_status

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ALL_READY = {"gateway": "", "encoding": "", "fusion": "", "hashing": "", "ranking": ""}


def test_every_service_is_serving_when_every_part_is_ready():
    assert {s: health_status(s, ALL_READY) for s in HEALTH_SERVICES} == {s: SERVING for s in HEALTH_SERVICES}


@pytest.mark.parametrize("part", sorted(ALL_READY))
def test_a_part_not_ready_fails_the_whole_and_its_own_service_only(part):
    ready = dict(ALL_READY, **{part: "ct-ild: weights missing"})
    status = {s: health_status(s, ready) for s in HEALTH_SERVICES}
    assert status[""] == status["lungsearch.v1.LungSearch"] == NOT_SERVING
    for stage in ("encoding", "fusion", "hashing", "ranking"):
        own = f"lungsearch.v1.{stage.capitalize()}"
        assert status[own] == (NOT_SERVING if stage == part else SERVING), (part, own)


def test_a_stage_that_did_not_answer_is_not_serving():
    ready = {k: v for k, v in ALL_READY.items() if k != "ranking"}
    assert health_status("lungsearch.v1.Ranking", ready) == NOT_SERVING


def test_an_unknown_service_name_is_unknown():
    assert health_status("lungsearch.v1.Nope", ALL_READY) == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
