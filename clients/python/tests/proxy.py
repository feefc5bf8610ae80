"""A TCP proxy the tests put between a client and the router to lose data on purpose:
frames from the server can be held, released one WebSocket frame at a time, and the
connection cut with whatever is still held thrown away (as a dropped connection does)."""
from __future__ import annotations

import asyncio
from typing import List, Optional


def frame_length(buf: bytes) -> Optional[int]:
    """Bytes of the first complete (unmasked, server-to-client) WebSocket frame in buf."""
    if len(buf) < 2:
        return None
    n, head = buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, head = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, head = int.from_bytes(buf[2:10], "big"), 10
    return head + n if len(buf) >= head + n else None


class _Link:
    def __init__(self, to_client: asyncio.StreamWriter, to_server: asyncio.StreamWriter) -> None:
        self.to_client, self.to_server = to_client, to_server
        self.held = b""


class Proxy:
    """Forwards to the router on `port`. While `holding`, data from the server is kept
    (per connection: HTTP requests pass through the proxy too) instead of forwarded."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.holding = False
        self._links: List[_Link] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
        link = _Link(client_w, server_w)
        self._links.append(link)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, from_server: bool) -> None:
            try:
                while data := await r.read(65536):
                    if from_server and (self.holding or link.held):
                        link.held += data
                    else:
                        w.write(data)
                        await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()
        await asyncio.gather(pipe(client_r, server_w, False), pipe(server_r, client_w, True))

    async def release_frame(self, timeout: float = 10.0) -> None:
        """Forwards the first held frame once one is complete."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for link in self._links:
                n = frame_length(link.held)
                if n is not None:
                    link.to_client.write(link.held[:n])
                    link.held = link.held[n:]
                    await link.to_client.drain()
                    return
            if loop.time() > deadline:
                raise TimeoutError("no complete frame held")
            await asyncio.sleep(0.01)

    def cut(self) -> None:
        """Drops every connection; held data is lost. New connections are served."""
        for link in self._links:
            link.to_client.transport.abort()
            link.to_server.transport.abort()
        self._links.clear()
        self.holding = False

    async def close(self) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()
