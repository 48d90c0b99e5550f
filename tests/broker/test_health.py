"""Worker health: probation until a first start, a growing backoff after each start timeout."""

from __future__ import annotations

from broker.health import HealthPolicy, Standing, WorkerHealth


def test_a_new_worker_is_on_probation_and_holds_one_unstarted_task() -> None:
    health = WorkerHealth()
    assert health.standing("w", 0.0) is Standing.PROBATION
    assert health.limits(["w"], {}, 0.0) == {"w": 1}
    assert health.limits(["w"], {"w": 1}, 0.0) == {"w": 0}


def test_a_start_proves_a_worker_its_slots_then_count_in_full() -> None:
    health = WorkerHealth()
    health.started("w")
    assert health.standing("w", 0.0) is Standing.PROVEN
    assert health.limits(["w"], {"w": 50}, 0.0) == {}  # not listed: its free slots are its limit


def test_start_timeouts_back_off_exponentially_up_to_the_cap_then_probation() -> None:
    policy = HealthPolicy(backoff_s=5.0, backoff_max_s=60.0)
    health = WorkerHealth(policy)
    health.started("w")
    waits = []
    now = 0.0
    for _ in range(6):
        waits.append(health.timed_out("w", now))
        assert health.standing("w", now) is Standing.BACKOFF
        assert health.limits(["w"], {}, now) == {"w": 0}
        now += waits[-1]
        # Out of backoff: on probation again, proven or not before.
        assert health.standing("w", now) is Standing.PROBATION
        assert health.limits(["w"], {}, now) == {"w": 1}
    assert waits == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]


def test_a_start_resets_the_backoff() -> None:
    health = WorkerHealth(HealthPolicy(backoff_s=1.0))
    for i in range(5):
        health.timed_out("w", float(i * 100))
    health.started("w")
    assert health.standing("w", 500.0) is Standing.PROVEN
    assert health.timed_out("w", 500.0) == 1.0  # counting from the first again


def test_the_backoff_survives_a_huge_number_of_timeouts() -> None:
    health = WorkerHealth(HealthPolicy(backoff_s=5.0, backoff_max_s=300.0))
    for _ in range(5000):
        wait = health.timed_out("w", 0.0)
    assert wait == 300.0


def test_absent_workers_are_forgotten_unless_in_backoff() -> None:
    health = WorkerHealth(HealthPolicy(backoff_s=10.0))
    health.started("gone")
    health.started("here")
    health.timed_out("sulking", 0.0)
    health.forget({"here"}, 1.0)
    assert len(health) == 2  # `here`, and `sulking` until its backoff is over
    assert health.standing("sulking", 1.0) is Standing.BACKOFF
    assert health.standing("gone", 1.0) is Standing.PROBATION  # a stranger again
    health.forget({"here"}, 11.0)
    assert len(health) == 1
