"""Leaving a Service without dropping a request: drain the keep-alive connections first.

Behind a Kubernetes Service, clients (kube-proxy's conntrack, ingress-nginx's upstream pool, any
HTTP client) keep connections open to one pod. When the pod stops, uvicorn closes the idle ones
at once: a client that sends its next request on such a connection in that instant gets "Server
disconnected without sending a response" or a reset, and nobody retries a POST. The real cluster
test lost 6 requests that way over a rolling restart, an upgrade and a rollback, with a plain
preStop sleep.

So the pod drains before it stops: the chart's preStop hook creates ``SERVING_DRAIN_FILE`` and
waits ``preStopSleepSeconds``; every worker notices the file within ``POLL_SECONDS`` and from then
on answers every request with ``Connection: close``, so each client closes its connection after
its next response and opens a new one, which the Service sends to a pod that is not stopping.
When the hook ends and kubelet sends SIGTERM, no busy connection is left to cut. Only the pod's
own hook (an exec in the container) can start a drain: nothing on the network can.
"""

from __future__ import annotations

import asyncio
import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .model_store import cancel_and_wait

POLL_SECONDS = 0.25


class Drain:
    """Whether this worker is draining; ``watch`` sets it when the drain file appears."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.draining = False
        self._task: asyncio.Task[None] | None = None

    async def _watch(self, path: str) -> None:
        while not os.path.exists(path):
            await asyncio.sleep(POLL_SECONDS)
        self.draining = True

    def start(self) -> None:
        if self.path:
            self._task = asyncio.create_task(self._watch(self.path))

    async def stop(self) -> None:
        await cancel_and_wait(self._task)


class DrainMiddleware:
    """While draining, every response says ``Connection: close`` (uvicorn then closes after it)."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.drain.draining:
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message["headers"] = [*headers, (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, send_closing)
