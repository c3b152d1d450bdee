"""Room for replies: the bytes of replies in the making or not yet taken by a client,
counted against a session's limit and, above it, the server's.

A call whose result can be large reserves room before it runs and waits for it; a
reply already made is counted at once while the transport sends it (it is in memory
either way). Without the session's room, replies to a client that reads slowly or not at
all pile up to ``max_calls_per_connection`` x ``max_reply_bytes``; without the server's,
many such sessions add up to many times a session's room.
"""

from __future__ import annotations

import trio


class ReplyRoom:
    """Bytes counted against *limit*, and against the room *within* (the server's) too."""

    def __init__(self, limit: int, within: ReplyRoom | None = None) -> None:
        self.limit = limit
        self.within = within
        self.used = 0
        self.batched = 0  # the server's: batch members' replies kept for their batch's reply
        self._waiting = trio.lowlevel.ParkingLot()

    def _fits(self, size: int) -> bool:
        # One reservation alone always fits: a reply never waits for itself.
        return not self.used or self.used + size <= self.limit

    async def reserve(self, size: int) -> None:
        """Wait until *size* more bytes fit here and in the room within, then count
        them in both. A checkpoint only when it waits."""
        while True:
            if not self._fits(size):
                await self._waiting.park()  # woken by give_back
            elif self.within is not None and not self.within._fits(size):
                await self.within._waiting.park()
            else:
                break
        self.count(size)

    def count(self, size: int) -> None:
        """Count *size* bytes at once (a reply made, going out), here and within."""
        self.used += size
        if self.within is not None:
            self.within.count(size)

    def give_back(self, size: int) -> None:
        self.used -= size
        self._waiting.unpark_all()  # each looks again: several smaller ones may fit
        if self.within is not None:
            self.within.give_back(size)

    def keep_for_batch(self, size: int) -> bool:
        """Count *size* bytes of a batch member's reply, kept until the batch's reply goes
        out, against the server's limit (besides what :meth:`reserve` counts); False, and
        nothing counted, when they do not fit. It never waits: the room a member would
        wait for could be held by its own batch, or by batches waiting likewise."""
        server = self.within or self
        if server.batched and server.batched + size > server.limit:
            return False
        server.batched += size
        return True

    def let_go_for_batch(self, size: int) -> None:
        (self.within or self).batched -= size
