"""Every worker of every replica serves the same version: telling them, and showing that they do.

A registry webhook or a `POST /reload` reaches one worker of one replica (the Service picks a
pod, uvicorn's accept picks a worker). Two mechanisms carry it to the others, and the poll
(SERVING_POLL_INTERVAL_SECONDS) stays as the fallback for anything they miss:

- Workers of one replica (`uvicorn --workers N`) share SERVING_WORKERS_DIR. Each writes its state
  to `worker-<pid>.json` after every check and every HEARTBEAT_SECONDS; a notification is a new
  token written to `notify`, which every worker reads every WATCH_SECONDS (a read of a few bytes)
  and answers with a registry check of its own. Without the directory a worker is alone.
- Replicas are peers: the addresses of SERVING_PEERS_DNS (a headless Service: one A record per
  ready pod, resolved anew each time) on SERVING_PEER_PORT, and SERVING_PEER_URLS. The replica
  that received the notification calls every peer's `POST /reload?propagate=false` with the
  reload token; the worker that answers there notifies its own siblings. Its own address may be
  among the peers: the check that causes is "unchanged" and costs one registry call.

`GET /replicas` shows them all: this replica's workers from the directory, and each peer's
`GET /replicas?scope=local`; `agreed` is true when every worker answered, has a model, and all
serve one version. The pipeline's notify step waits for that (dags/.../serving_client.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from .config import Settings
from .model_store import ModelStore, cancel_and_wait

log = logging.getLogger("serving.cluster")

WATCH_SECONDS = 0.1
HEARTBEAT_SECONDS = 1.0
STALE_SECONDS = 5.0  # a worker file not rewritten for this long belongs to a dead worker
REPLICA = socket.gethostname()


@dataclass(frozen=True)
class WorkerState:
    replica: str
    pid: int
    version: str | None
    loaded: bool
    last_check_at: str | None
    last_check_outcome: str | None
    updated_at: float

    @property
    def key(self) -> tuple[str, int]:
        return self.replica, self.pid


@dataclass(frozen=True)
class PeerStatus:
    url: str
    reachable: bool
    error: str | None = None


@dataclass(frozen=True)
class ClusterView:
    agreed: bool
    version: str | None
    versions: dict[str, int]
    workers: list[WorkerState]
    peers: list[PeerStatus]


def own_state(store: ModelStore) -> WorkerState:
    current = store.current
    return WorkerState(
        replica=REPLICA,
        pid=os.getpid(),
        version=current.version if current else None,
        loaded=current is not None,
        last_check_at=store.last_check_at.isoformat() if store.last_check_at else None,
        last_check_outcome=store.last_check_outcome,
        updated_at=time.time(),
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Workers:
    """This replica's workers, through the shared directory (or this worker alone without one)."""

    def __init__(self, directory: str | None, store: ModelStore) -> None:
        self.directory = Path(directory) if directory else None
        self.store = store
        self._seen_token: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def _own_file(self) -> Path:
        assert self.directory is not None
        return self.directory / f"worker-{os.getpid()}.json"

    @property
    def _notify_file(self) -> Path:
        assert self.directory is not None
        return self.directory / "notify"

    def start(self) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seen_token = self._read_token()
        self.write_state()
        self.store.on_check(self.write_state)
        self._task = asyncio.create_task(self._watch(), name="worker-watch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self.directory is not None:
            self._own_file.unlink(missing_ok=True)

    def _read_token(self) -> str | None:
        try:
            return self._notify_file.read_text()
        except OSError:
            return None

    def _write_atomically(self, path: Path, text: str) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(text)
        os.replace(temporary, path)

    def write_state(self) -> None:
        if self.directory is None:
            return
        try:
            self._write_atomically(self._own_file, json.dumps(asdict(own_state(self.store))))
        except OSError as exc:
            log.warning("cannot write the worker state in %s: %s", self.directory, exc)

    def notify_siblings(self) -> None:
        """Make every other worker of this replica check the registry now."""
        if self.directory is None:
            return
        token = secrets.token_hex(8)
        self._seen_token = token  # this worker checks by itself; only the others should react
        try:
            self._write_atomically(self._notify_file, token)
        except OSError as exc:
            log.warning("cannot notify the other workers through %s: %s", self.directory, exc)

    async def _watch(self) -> None:
        last_heartbeat = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            token = self._read_token()
            if token is not None and token != self._seen_token:
                self._seen_token = token
                self.store.trigger_check("sibling")
            if time.monotonic() - last_heartbeat >= HEARTBEAT_SECONDS:
                last_heartbeat = time.monotonic()
                self.write_state()

    def states(self) -> list[WorkerState]:
        """Every live worker of this replica (this one's state is fresh, the others' at most a
        heartbeat old)."""
        own = own_state(self.store)
        if self.directory is None:
            return [own]
        found = {own.key: own}
        now = time.time()
        for path in self.directory.glob("worker-*.json"):
            try:
                state = WorkerState(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if state.key in found:
                continue
            if now - state.updated_at > STALE_SECONDS or not _pid_alive(state.pid):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found[state.key] = state
        return sorted(found.values(), key=lambda s: s.pid)


class Peers:
    """The other replicas: a headless Service's addresses and/or a fixed list of URLs."""

    def __init__(self, settings: Settings) -> None:
        self.dns_name = settings.peers_dns
        self.port = settings.peer_port
        self.static_urls = [url.strip().rstrip("/") for url in settings.peer_urls.split(",") if url.strip()]
        self.timeout = settings.peer_timeout_seconds
        self.token = settings.reload_token.get_secret_value()

    @property
    def configured(self) -> bool:
        return bool(self.dns_name or self.static_urls)

    async def urls(self) -> list[str]:
        urls = list(self.static_urls)
        if self.dns_name:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(self.dns_name, self.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("cannot resolve the peers' name %s: %s", self.dns_name, exc)
                infos = []
            for family, _, _, _, address in infos:
                host = str(address[0])
                url = f"http://[{host}]:{self.port}" if family == socket.AF_INET6 else f"http://{host}:{self.port}"
                if url not in urls:
                    urls.append(url)
        return urls

    async def propagate(self, trigger: str) -> list[PeerStatus]:
        """Ask every peer to check the registry now (and to tell its own workers)."""
        urls = await self.urls()
        if not urls:
            return []
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(timeout=self.timeout) as client:

            async def one(url: str) -> PeerStatus:
                try:
                    response = await client.post(f"{url}/reload", params={"propagate": "false"}, headers=headers)
                except httpx.HTTPError as exc:
                    return PeerStatus(url, False, f"{type(exc).__name__}: {exc}")
                if response.status_code >= 400:
                    return PeerStatus(url, False, f"HTTP {response.status_code}")
                return PeerStatus(url, True)

            results = await asyncio.gather(*(one(url) for url in urls))
        failed = [r for r in results if not r.reachable]
        log.info("told %d peers about a %s (%d failed: %s)", len(results), trigger, len(failed), failed)
        return list(results)

    async def workers(self) -> tuple[list[WorkerState], list[PeerStatus]]:
        """Every peer's workers, as they report them."""
        urls = await self.urls()
        if not urls:
            return [], []
        async with httpx.AsyncClient(timeout=self.timeout) as client:

            async def one(url: str) -> tuple[list[WorkerState], PeerStatus]:
                try:
                    response = await client.get(f"{url}/replicas", params={"scope": "local"})
                    response.raise_for_status()
                    states = [WorkerState(**w) for w in response.json()["workers"]]
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    return [], PeerStatus(url, False, f"{type(exc).__name__}: {exc}")
                return states, PeerStatus(url, True)

            results = await asyncio.gather(*(one(url) for url in urls))
        return [s for states, _ in results for s in states], [status for _, status in results]


class Cluster:
    """This worker's view of its siblings and peers, and how notifications reach them."""

    def __init__(self, settings: Settings, store: ModelStore) -> None:
        self.store = store
        self.workers = Workers(settings.workers_dir, store)
        self.peers = Peers(settings)
        self._background: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self.workers.start()

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.workers.stop()

    def announce(self, trigger: str, propagate: bool) -> None:
        """The champion may have moved: tell this replica's other workers and, unless this
        notification came from a peer, every peer (in the background)."""
        self.workers.notify_siblings()
        if propagate and self.peers.configured:
            task = asyncio.create_task(self.peers.propagate(trigger), name=f"propagate-{trigger}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def view(self, scope: Literal["local", "all"]) -> ClusterView:
        workers = {state.key: state for state in self.workers.states()}
        peers: list[PeerStatus] = []
        if scope == "all" and self.peers.configured:
            remote, peers = await self.peers.workers()
            for state in remote:
                workers.setdefault(state.key, state)
        ordered = sorted(workers.values(), key=lambda s: (s.replica, s.pid))
        versions = Counter(state.version or "none" for state in ordered)
        agreed = (
            bool(ordered)
            and all(state.loaded for state in ordered)
            and len(versions) == 1
            and all(peer.reachable for peer in peers)
        )
        return ClusterView(
            agreed=agreed,
            version=ordered[0].version if agreed else None,
            versions=dict(versions),
            workers=ordered,
            peers=peers,
        )
