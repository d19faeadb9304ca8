"""A TCP relay that can be cut: a network partition between two cluster nodes.

Each node of a test cluster dials every other node through its own relay (node i reaches node j
through relay (i, j)), so cutting the relays to and from one node isolates it both ways while the
others still talk. Cutting closes live connections and refuses new ones until healed.
"""

from __future__ import annotations

import asyncio
import threading


class Relay:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port: int | None = None
        self.cut = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writers: set = set()
        self._ready = threading.Event()

    def start(self) -> "Relay":
        threading.Thread(target=self._run, name="relay", daemon=True).start()
        if not self._ready.wait(10):
            raise RuntimeError("relay did not start")
        return self

    def _run(self):
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def set_cut(self, cut: bool):
        self.cut = cut
        if cut and self._loop is not None:
            self._loop.call_soon_threadsafe(self._close_all)

    def _close_all(self):
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _handle(self, reader, writer):
        if self.cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pump(src, dst):
            try:
                while not self.cut:
                    data = await src.read(65536)
                    if not data or self.cut:
                        break
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
