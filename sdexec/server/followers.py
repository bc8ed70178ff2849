"""Followers: ``attach`` and ``logs --follow`` streams, bounded per connection.

A follower runs in its request's task for as long as the process (or its
client) lasts.  At most :data:`MAX_FOLLOWERS` run at once on one connection
(EAGAIN past that), counted as soon as the request is accepted, and all of a
connection's followers are cancelled when it closes, not when their
processes end.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Coroutine
from typing import Any

import structlog

from sdexec.base.errors import SdexecError
from sdexec.broker.request import Request

log = structlog.get_logger("sdexec.service")

#: attach and logs --follow streams at once on one connection.
MAX_FOLLOWERS = 64


class Followers:
    """The follower tasks of each connection, and how many it has."""

    def __init__(self) -> None:
        self._tasks: dict[str, set[asyncio.Task[Any]]] = {}  # conn id -> follower tasks
        self._count: dict[str, int] = {}  # conn id -> followers, counted at once

    def check(self, req: Request) -> None:
        """EAGAIN past the bound; else count one more follower on the connection."""
        conn_id = req.conn.id
        if self._count.get(conn_id, 0) >= MAX_FOLLOWERS:
            raise SdexecError(
                errno.EAGAIN,
                f"too many attach or logs --follow streams on this connection ({MAX_FOLLOWERS})",
            )
        self._count[conn_id] = self._count.get(conn_id, 0) + 1

    async def run(self, req: Request, work: Coroutine[Any, Any, None]) -> None:
        """Run a counted follower in the request's task, cancelled if its connection closes."""
        task = asyncio.current_task()
        assert task is not None
        conn_id = req.conn.id
        try:
            if not req.connected:
                work.close()
                return
            self._tasks.setdefault(conn_id, set()).add(task)
            await work
        finally:
            running = self._tasks.get(conn_id)
            if running is not None:
                running.discard(task)
                if not running:
                    del self._tasks[conn_id]
            left = self._count.get(conn_id, 1) - 1
            if left > 0:
                self._count[conn_id] = left
            else:
                self._count.pop(conn_id, None)

    def stop(self, conn_id: str) -> None:
        """A connection closed: its followers (journalctl readers) stop now."""
        followers = self._tasks.pop(conn_id, set())
        for task in followers:
            task.cancel()
        if followers:
            log.debug("followers stopped with their client", conn=conn_id, count=len(followers))
