"""Where the server's runs are written: one history, written by one thread for every run.

``written`` is how a route waits, without holding the event loop, until what it queued is
committed: a ``202`` goes out only once its run is in the history, so a server killed right
after answering still knows every run it accepted.
"""

from __future__ import annotations

import asyncio

from fanout.history import HistoryWriter


async def written(writer: HistoryWriter) -> None:
    """Return once every write queued on ``writer`` so far is done."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not done.done():
            done.set_result(None)

    def signal() -> None:  # in the writer's thread, once what was queued before is done
        loop.call_soon_threadsafe(resolve)

    writer.after(signal)
    await done
