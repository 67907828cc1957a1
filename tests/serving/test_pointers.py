"""lungsearch.serving.pointers: a Gateway replica follows LIVE and STAGED written by another process,
within the re-read interval and not before, without Ray."""

from __future__ import annotations

import os

import pytest

from lungsearch import registry
from lungsearch.serving.pointers import RegistryPointers


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _register(root, profile: str, *versions: str) -> None:
    for v in versions:
        d = root / profile / v
        d.mkdir(parents=True)
        (d / registry.CARD_FILE).write_text("schema: 1\n")  # enough for the pointers' "is it registered"


def _point(root, profile: str, pointer: str, version: str, *, at_ns: int) -> None:
    path = root / profile / pointer
    path.write_text(version + "\n")
    os.utime(path, ns=(at_ns, at_ns))  # explicit: two writes within one clock tick still differ


@pytest.fixture
def reg(tmp_path):
    _register(tmp_path, "ct-ild", "20260101-000000-aaaaaa", "20260101-000000-bbbbbb")
    _point(tmp_path, "ct-ild", registry.LIVE_FILE, "20260101-000000-aaaaaa", at_ns=10**18)
    return tmp_path


def test_a_switch_by_another_process_is_followed_after_the_interval_not_before(reg):
    clock = Clock()
    ptr = RegistryPointers(reg, ["ct-ild"], interval=2.0, clock=clock)
    assert ptr.poll() == {}  # the state at start-up is not a change
    _point(reg, "ct-ild", registry.LIVE_FILE, "20260101-000000-bbbbbb", at_ns=10**18 + 5)
    clock.t += 1.9
    assert ptr.poll() == {}  # inside the interval: not re-read yet
    clock.t += 0.2
    assert ptr.poll() == {"ct-ild": "20260101-000000-bbbbbb"}
    clock.t += 5
    assert ptr.poll() == {}  # reported once


def test_a_request_two_intervals_after_the_write_always_sees_it(reg):
    """Whatever the phase of the replica's last read, a poll at least `interval` after the write
    re-reads (the guarantee ActivateModel's wait relies on)."""
    for phase in (0.0, 0.5, 1.0, 1.99):
        clock = Clock()
        ptr = RegistryPointers(reg, ["ct-ild"], interval=2.0, clock=clock)
        clock.t += phase
        ptr.poll()  # some earlier request
        v = "20260101-000000-bbbbbb"
        _point(reg, "ct-ild", registry.LIVE_FILE, v, at_ns=10**18 + int(1e6 * (phase + 1)))
        clock.t += 2.0
        assert ptr.poll() == {"ct-ild": v}, phase


def test_own_write_is_not_a_change_to_follow(reg):
    clock = Clock()
    ptr = RegistryPointers(reg, ["ct-ild"], interval=2.0, clock=clock)
    _point(reg, "ct-ild", registry.LIVE_FILE, "20260101-000000-bbbbbb", at_ns=10**18 + 7)
    ptr.wrote_live("ct-ild")
    clock.t += 3
    assert ptr.poll() == {}


def test_staged_is_read_with_the_same_interval_and_cleared_when_removed(reg):
    clock = Clock()
    ptr = RegistryPointers(reg, ["ct-ild"], interval=2.0, clock=clock)
    assert ptr.staged_for("ct-ild") == ""
    _point(reg, "ct-ild", registry.STAGED_FILE, "20260101-000000-bbbbbb", at_ns=10**18)
    clock.t += 1
    ptr.poll()
    assert ptr.staged_for("ct-ild") == ""  # not yet
    clock.t += 1
    ptr.poll()
    assert ptr.staged_for("ct-ild") == "20260101-000000-bbbbbb"
    (reg / "ct-ild" / registry.STAGED_FILE).unlink()
    clock.t += 2
    ptr.poll()
    assert ptr.staged_for("ct-ild") == ""


def test_a_pointer_to_a_missing_version_is_not_followed(reg):
    clock = Clock()
    ptr = RegistryPointers(reg, ["ct-ild"], interval=2.0, clock=clock)
    _point(reg, "ct-ild", registry.LIVE_FILE, "20990101-000000-nothere", at_ns=10**18 + 9)
    _point(reg, "ct-ild", registry.STAGED_FILE, "20990101-000000-nothere", at_ns=10**18 + 9)
    clock.t += 2
    assert ptr.poll() == {} and ptr.staged_for("ct-ild") == ""
