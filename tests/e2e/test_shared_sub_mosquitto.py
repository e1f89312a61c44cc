"""What mosquitto does with a dead shared-subscription member's messages (bench/shared_sub_probe.py;
docs/INTEROP.md): they stay with the member's persistent session, never go to the other members,
and arrive when the member returns with the same client id, unless its queue limit is reached, in
which case mosquitto drops them. This is why each sink worker needs a stable client id, a persistent
session, a restart policy, and a broker without a queue limit (``max_queued_messages 0``)."""

from __future__ import annotations

import pytest

from bench.shared_sub_probe import probe
from tests.support import Mosquitto, free_port, running_mosquitto

pytestmark = pytest.mark.timeout(60)


async def test_a_dead_members_messages_wait_for_it_and_nothing_moves_to_the_others(mosquitto: Mosquitto) -> None:
    """The test broker has no queue or in-flight limit (``max_queued_messages 0``)."""
    obs = await probe(mosquitto.url, 20)
    assert obs.first_a and obs.first_b, "round robin: both members got messages"
    assert set(obs.first_a) | set(obs.first_b) == set(range(1, 21))
    summary = obs.summary()
    assert summary["unacked_in_flight_went_to_b"] == []
    assert obs.a_session_present
    assert summary["unacked_in_flight_redelivered_to_returning_a"] == obs.first_a
    away = set(range(21, 41)) - set(obs.b_while_a_away)
    assert away, "the away member kept its turn in the round robin"
    assert set(obs.a_on_return) == set(obs.first_a) | away  # each exactly once
    assert len(obs.a_on_return) == len(set(obs.a_on_return))
    assert obs.b_after_return == []
    assert obs.missing == [] and obs.twice == []


async def test_a_dead_member_over_its_queue_limit_loses_its_share() -> None:
    """With limits (Debian's defaults are ``max_inflight_messages 20``, ``max_queued_messages 1000``;
    smaller here), what does not fit the member's in-flight window and queue is dropped: not sent
    to the live member."""
    port = free_port()
    conf = (f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_inflight_messages 2\nmax_queued_messages 3\n")
    with running_mosquitto(port=port, config=conf) as broker:
        obs = await probe(broker.url, 20, timeout=1.5)
    # Round robin gives A the odd numbers and B the even ones; the limits apply to B too, so B may
    # drop some of its own under load: only A's share is asserted exactly.
    a_share = set(range(1, 41, 2))
    got_by_b = set(obs.first_b) | set(obs.b_while_a_away) | set(obs.b_after_return)
    assert not got_by_b & a_share, "nothing of the dead member's share went to the live one"
    assert len(obs.first_a) == 2  # the in-flight window
    assert set(obs.a_on_return) <= a_share
    assert len(obs.a_on_return) == 2 + 3  # the window and the queue, redelivered
    assert a_share - set(obs.a_on_return) <= set(obs.missing)  # the rest of A's share: dropped
    assert obs.twice == []
