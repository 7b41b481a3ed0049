"""A node's lifecycle: ``created -> starting -> running -> draining -> stopped``, and the moves it allows."""

from __future__ import annotations

import enum


class Lifecycle(enum.StrEnum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


MOVES: dict[Lifecycle, frozenset[Lifecycle]] = {
    Lifecycle.CREATED: frozenset({Lifecycle.STARTING, Lifecycle.STOPPED}),
    Lifecycle.STARTING: frozenset({Lifecycle.RUNNING, Lifecycle.DRAINING, Lifecycle.STOPPED}),
    Lifecycle.RUNNING: frozenset({Lifecycle.DRAINING}),
    Lifecycle.DRAINING: frozenset({Lifecycle.STOPPED}),
    Lifecycle.STOPPED: frozenset(),
}
