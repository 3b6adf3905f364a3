"""The sans-IO connection state (``threadline.transport.policy``): every decision without a socket."""

from __future__ import annotations

import pytest

from threadline.transport.limits import Limits
from threadline.transport.policy import TRANSITIONS, ConnectionState, Phase, Verdict


def state(**kw) -> ConnectionState:  # type: ignore[no-untyped-def]
    return ConnectionState(Limits(**kw), now=0.0)


def test_the_transition_table_is_total_and_closing_is_one_way():
    for phase in Phase:
        for event in ("close", "gone"):
            assert (phase, event) in TRANSITIONS
    assert all(TRANSITIONS[(p, e)] is not Phase.OPEN for p in Phase for e in ("close", "gone"))


def test_the_first_close_decision_wins():
    s = state()
    first = s.close(1013, "overflow")
    assert first is not None and first.discard_queued and s.phase is Phase.CLOSING
    assert s.close(1011, "later") is None and s.decision == first
    s.gone()
    assert s.phase is Phase.CLOSED and s.decision == first


def test_a_vanished_peer_is_a_decision_with_no_code():
    s = state()
    s.gone()
    assert s.phase is Phase.CLOSED and s.decision.code is None
    assert s.close(1000) is None


def test_bad_frames_in_a_row_close_with_1008_and_a_good_one_resets_the_count():
    s = state(max_bad_frames=3)
    assert s.bad_frame() is None and s.bad_frame() is None
    s.good_frame()
    assert s.bad_frame() is None and s.bad_frame() is None
    decision = s.bad_frame()
    assert decision is not None and decision.code == 1008 and "3 bad frames" in decision.reason


def test_the_frame_rate_refills_with_time():
    s = state(rate=10, burst=2)
    verdicts = [s.receive_message(10, now=0.0) for _ in range(3)]
    assert verdicts == [Verdict.ADMIT, Verdict.ADMIT, Verdict.RATE_LIMITED]
    assert s.receive_message(10, now=0.1) is Verdict.ADMIT  # one token back after 0.1 s
    assert s.rate_limited == 1


def test_the_byte_rate_admits_one_largest_frame_then_waits():
    s = state(byte_rate=1000, byte_burst=1500)
    assert s.receive_message(1500, now=0.0) is Verdict.ADMIT
    assert s.receive_message(10, now=0.0) is Verdict.RATE_LIMITED
    assert s.receive_message(500, now=0.5) is Verdict.ADMIT
    assert s.receive_message(2000, now=100.0) is Verdict.RATE_LIMITED  # above the burst: never


def test_nothing_is_admitted_once_closing():
    s = state()
    s.close(1001)
    with pytest.raises(RuntimeError):
        s.receive_message(1, now=0.0)
