"""The broker: assigns tasks to ready workers and repairs the board."""

from __future__ import annotations

from broker.election import leader_id
from broker.repair import RetryPolicy
from broker.scheduler import QueuedTask, TodoQueue, plan
from broker.service import Broker, BrokerSettings, BrokerStats
from broker.view import BoardView, PeerView

__all__ = [
    "BoardView",
    "Broker",
    "BrokerSettings",
    "BrokerStats",
    "PeerView",
    "QueuedTask",
    "RetryPolicy",
    "TodoQueue",
    "leader_id",
    "plan",
]
