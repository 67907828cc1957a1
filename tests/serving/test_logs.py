"""lungsearch's log records inside a Serve replica go to Serve's replica log (Serve configures only
the ``ray.serve`` logger; without this, INFO lines were dropped)."""

import logging

import pytest

from lungsearch.serving.logs import route_to_serve_log


@pytest.fixture
def loggers():
    serve, lib = logging.getLogger("ray.serve"), logging.getLogger("lungsearch")
    saved = (list(serve.handlers), serve.level, list(lib.handlers), lib.level, lib.propagate)
    yield serve, lib
    serve.handlers[:], lib.handlers[:] = saved[0], saved[2]
    serve.setLevel(saved[1])
    lib.setLevel(saved[3])
    lib.propagate = saved[4]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_records_reach_serve_handlers_once_at_serve_level(loggers, monkeypatch):
    from lungsearch.serving import logs

    monkeypatch.setattr(logs, "_in_replica", lambda: True)  # what Serve's replica context says there
    serve, lib = loggers
    sink = _Collect()
    serve.handlers[:] = [sink]
    serve.setLevel(logging.INFO)
    route_to_serve_log()
    route_to_serve_log()  # idempotent: no duplicate handler
    logging.getLogger("lungsearch.services.ranking").info("index %s rebuilt: %d cases", "p@v", 3)
    logging.getLogger("lungsearch.services.ranking").debug("below Serve's level")
    assert sink.messages == ["index p@v rebuilt: 3 cases"]
    assert lib.handlers.count(sink) == 1 and not lib.propagate


def test_outside_a_replica_nothing_changes(loggers):
    """A test process that started Serve has ``ray.serve`` handlers too: its ``lungsearch`` logger
    must keep propagating (pytest's caplog, the process's own handlers)."""
    serve, lib = loggers
    for handlers in ([], [_Collect()]):
        serve.handlers[:] = handlers
        before = (list(lib.handlers), lib.level, lib.propagate)
        route_to_serve_log()
        assert (list(lib.handlers), lib.level, lib.propagate) == before
