"""A TCP fault proxy for Kafka connections (asyncio, in a background thread).

It relays bytes between clients and one upstream broker and understands just enough of the protocol
(size-prefixed frames; api key and correlation id of requests; correlation id of responses) to inject
this fault: for chosen Produce requests (numbered 1, 2, ... across all connections) it forwards the
request upstream, waits for the broker's response, and then drops BOTH connections instead of relaying
that response. The broker has appended the batch but the client never learns it, so it retries — the
exact situation idempotent producers exist for.

Start the broker with `--advertised-kafka 127.0.0.1:<proxy.port>` so clients reconnect through the proxy.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from typing import Callable

PRODUCE = 0


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1",
                 drop_produce: Callable[[int], bool] | set[int] = frozenset(), max_drops: int = 1 << 30):
        self.upstream = (upstream_host, upstream_port)
        self._should_drop = drop_produce if callable(drop_produce) else (lambda n, s=set(drop_produce): n in s)
        self.max_drops = max_drops
        self.produce_requests = 0
        self.dropped = 0
        self.connections = 0
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._writers: set = set()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def _run(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def stop(self):
        if self._loop is None:
            return

        async def shutdown():
            self._server.close()
            for w in list(self._writers):
                w.close()
            await asyncio.sleep(0)

        fut = asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        try:
            fut.result(5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- relaying
    @staticmethod
    async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readexactly(4)
            (n,) = struct.unpack(">i", head)
            if n < 0 or n > 256 * 1024 * 1024:
                return None
            return head + await reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def _handle(self, c_reader, c_writer):
        self.connections += 1
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.close()
            return
        self._writers.update((c_writer, u_writer))
        doomed: set[int] = set()   # correlation ids whose responses must not reach the client
        done = asyncio.Event()

        def close_both():
            done.set()
            for w in (c_writer, u_writer):
                try:
                    w.transport.abort()
                except Exception:  # noqa: BLE001
                    pass

        async def client_to_broker():
            while not done.is_set():
                frame = await self._read_frame(c_reader)
                if frame is None:
                    break
                api_key, _ver, corr = struct.unpack(">hhi", frame[4:12])
                if api_key == PRODUCE:
                    with self._lock:
                        self.produce_requests += 1
                        n = self.produce_requests
                        if self.dropped < self.max_drops and self._should_drop(n):
                            self.dropped += 1
                            doomed.add(corr)
                u_writer.write(frame)
                try:
                    await u_writer.drain()
                except ConnectionError:
                    break
            close_both()

        async def broker_to_client():
            while not done.is_set():
                frame = await self._read_frame(u_reader)
                if frame is None:
                    break
                (corr,) = struct.unpack(">i", frame[4:8])
                if corr in doomed:
                    break   # the broker answered; the client never hears it
                c_writer.write(frame)
                try:
                    await c_writer.drain()
                except ConnectionError:
                    break
            close_both()

        try:
            await asyncio.gather(client_to_broker(), broker_to_client())
        finally:
            self._writers.discard(c_writer)
            self._writers.discard(u_writer)
