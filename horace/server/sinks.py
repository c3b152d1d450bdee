"""The log sinks as the settings ask for them, run in this process.

:func:`run_sinks` starts the Godot and conversation runners as supervised children and
gives the observer that feeds them each call. The server runs it itself
(``HORACE_SINK_PROCESS=off``) or leaves it to a child process of its own
(:mod:`horace.server.sinkprocess`, the default), which runs this same function.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from horace.config import Settings
from horace.server.observer import Observer, Observers
from horace.sinks.conversations import ConversationRecorder, ConversationTransport, Talks, prune_conversations
from horace.sinks.godot import GodotCallLog, GodotTransport
from horace.sinks.supervisor import SinkRunner


@attrs.frozen
class SinkWiring:
    """Which sinks run, and what each learns of the calls."""

    godot: bool
    conversations: bool
    turns_to_godot: bool  # conversation turns sent to Godot as well
    call_lines_to_godot: bool  # each call's log line (INFO) sent to Godot from the call itself

    @classmethod
    def of(cls, settings: Settings) -> SinkWiring:
        godot = bool(settings.godot_url)
        return cls(
            godot=godot,
            conversations=settings.conversations,
            turns_to_godot=godot and settings.conversations_to_godot,
            call_lines_to_godot=godot and godot_level(settings) <= logging.INFO,
        )

    @property
    def any(self) -> bool:
        return self.godot or self.conversations

    @property
    def names(self) -> tuple[str, ...]:
        """The sinks that run, by name (as their runners are named)."""
        running = (("godot", self.godot), ("conversations", self.conversations))
        return tuple(name for name, on in running if on)

    @property
    def turns(self) -> bool:
        """Are calls made into conversation turns (stored, or sent to Godot)?"""
        return self.conversations or self.turns_to_godot

    @property
    def observes_calls(self) -> bool:
        return self.turns or self.call_lines_to_godot


def godot_level(settings: Settings) -> int:
    """The level from which Horace's log records go to Godot."""
    return logging.Handler(settings.godot_level).level


@attrs.frozen
class LocalSinks:
    """Running sinks: the observer of calls (None when no sink wants them), the Godot
    runner (for Horace's own log records) and every runner (for their status)."""

    observer: Observer | None
    godot: SinkRunner | None
    runners: tuple[SinkRunner, ...]

    def status(self) -> dict[str, dict[str, Any]]:
        return {runner.name: runner.status() for runner in self.runners}


@asynccontextmanager
async def run_sinks(settings: Settings, talks: Talks | None, spool_dir: Path) -> AsyncIterator[LocalSinks]:
    """The sinks *settings* ask for, running while the body runs (conversation turns
    stored in *talks*); on exit they flush what they hold and spill the rest to
    *spool_dir*."""
    wiring = SinkWiring.of(settings)
    options: dict[str, Any] = {
        "spool_dir": spool_dir,
        "capacity": settings.sink_queue,
        "capacity_bytes": settings.sink_queue_bytes,
        "flush_seconds": settings.sink_flush,
        "linger": settings.sink_linger,
        "backoff_base": settings.sink_backoff_base,
        "backoff_cap": settings.sink_backoff_cap,
    }
    godot = None
    if wiring.godot:
        assert settings.godot_url is not None
        godot = SinkRunner(GodotTransport(settings.godot_url, settings.godot_tool), **options)
    conversations = None
    if wiring.conversations:
        assert talks is not None
        conversations = SinkRunner(ConversationTransport(talks, settings.conversations_url), **options)
    observers: list[Observer] = []
    if wiring.turns:
        observers.append(
            ConversationRecorder(
                conversations, godot if wiring.turns_to_godot else None, settings.turn_max_bytes
            )
        )
    if godot is not None and wiring.call_lines_to_godot:
        observers.append(GodotCallLog(godot))
    observer = observers[0] if len(observers) == 1 else Observers(*observers) if observers else None
    runners = tuple(runner for runner in (godot, conversations) if runner is not None)
    async with trio.open_nursery() as nursery:
        for runner in runners:
            await nursery.start(runner.run)
        if conversations is not None and talks is not None and settings.conversation_retention is not None:
            nursery.start_soon(
                prune_conversations, talks, settings.conversation_retention, settings.purge_interval
            )
        try:
            yield LocalSinks(observer, godot, runners)
        finally:
            nursery.cancel_scope.cancel()  # the sinks flush what they hold, then spill
