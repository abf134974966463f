"""Benchmark: this model server against `mlflow models serve` on the same registered model.

    .venv/bin/python bench/serving.py [--duration 15] [--concurrency 1 16 64] [--swaps 3]

What it does, all on 127.0.0.1 in one run (the machine is shared and noisy: only figures from
the same run compare, and every row carries the load average read just before it):
  1. starts a lean MLflow server (sqlite, proxied artifacts, webhooks to loopback allowed) and
     registers an iris RandomForest (100 trees) as `bench_iris`, alias champion;
  2. starts `mlflow models serve --env-manager local` (one worker) and this server
     (`uvicorn serving.app.main:app --workers 1`) on that model, and checks that both give
     identical predictions for the 150 iris rows (MLflow's /invocations against ours);
  3. drives each with wrk (single-row POST bodies, a Lua script) at each concurrency and prints
     req/s, p50 and p99 for both, the throughput ratio, and this server's no-op endpoint
     (GET /healthz: routing, middleware, JSON response, no model) under the same load with the
     ratio predict/no-op;
  4. moves the champion --swaps times while wrk loads this server, cycling the triggers (an
     MLflow webhook, the poll alone, the pipeline's POST /reload), and prints the failed requests
     (non-2xx + socket errors) and the time from each alias move to the new version serving;
  5. restarts this server with --workers 2 (shared SERVING_WORKERS_DIR), prints its throughput
     and no-op figures, moves the champion by webhook and prints how long until GET /replicas
     shows every worker on the new version.
Needs wrk (Debian package, scripts/apt-packages.txt). Every load run is bounded by --duration.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script: make the checkout importable (serving, tests.support).
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import httpx  # noqa: E402

from tests.support.mlflow_server import free_port, register_iris_model, start_mlflow_server  # noqa: E402

WEBHOOK_SECRET = secrets.token_urlsafe(24)  # this run's webhook secret

MODEL_NAME = "bench_iris"
ROW = [5.1, 3.5, 1.4, 0.2]
COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
TOKEN = secrets.token_urlsafe(24)  # this run's reload token


@dataclass
class WrkResult:
    load_average: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int
    cpu_ms_per_request: float = float("nan")


def _to_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not match:
        raise ValueError(f"cannot parse wrk latency {value!r}")
    number, unit = float(match[1]), match[2]
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in a process group (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[0] is the state: pgrp is the 5th field of the file
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def run_wrk(
    url: str, body: dict[str, object] | None, concurrency: int, duration: int, workdir: Path, pgid: int | None = None
) -> WrkResult:
    """wrk against `url`: POST `body` as JSON, or GET when body is None."""
    script: list[str] = []
    if body is not None:
        lua = workdir / f"post-{abs(hash(json.dumps(body))) % 10**8}.lua"
        headers = 'wrk.headers["Content-Type"] = "application/json"'
        lua.write_text(f"wrk.method = \"POST\"\nwrk.body = '{json.dumps(body)}'\n{headers}\n")
        script = ["-s", str(lua)]
    threads = min(2, concurrency)
    load = os.getloadavg()[0]
    cpu_before = group_cpu_seconds(pgid) if pgid else 0.0
    output = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration}s", "--timeout", "5s", "--latency", *script, url],
        capture_output=True, text=True, check=True, timeout=duration + 60,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    p50 = _to_ms(re.search(r"^\s+50%\s+(\S+)", output, re.M)[1])  # type: ignore[index]
    p99 = _to_ms(re.search(r"^\s+99%\s+(\S+)", output, re.M)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    failed = int(non_2xx[1]) if non_2xx else 0
    if socket:
        failed += sum(int(g) for g in socket.groups())
    cpu = (group_cpu_seconds(pgid) - cpu_before) * 1000 / max(total, 1) if pgid else float("nan")
    return WrkResult(load, rps, p50, p99, total, failed, cpu)


class Process:
    def __init__(self, name: str, command: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        with open(self.log, "wb") as log:
            self.popen = subprocess.Popen(
                command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_http(self, url: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited; log:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; log:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)


def served_version(url: str) -> str | None:
    try:
        response = httpx.post(f"{url}/predict", json={"features": ROW}, timeout=5)
        return str(response.json()["model_version"]) if response.status_code == 200 else None
    except httpx.HTTPError:
        return None


def replicas_version(url: str) -> str | None:
    """The version all workers agree on (GET /replicas), else None."""
    try:
        view = httpx.get(f"{url}/replicas", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    return str(view["version"]) if view.get("agreed") else None


def start_server(name: str, port: int, workers: int, env: dict[str, str], workdir: Path) -> Process:
    venv_bin = str(Path(sys.executable).parent)
    server = Process(
        name,
        [f"{venv_bin}/python", "-m", "uvicorn", "serving.app.main:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--no-access-log", "--log-level", "warning"],
        env, workdir,
    )  # fmt: skip
    server.wait_http(f"http://127.0.0.1:{port}/readyz")
    return server


def register_webhook(tracking_uri: str, url: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for old in client.list_webhooks():
        client.delete_webhook(old.webhook_id)
    webhook = client.create_webhook(
        name="bench-serving", url=f"{url}/webhooks/mlflow", events=["model_version_alias.created"],
        secret=WEBHOOK_SECRET,
    )  # fmt: skip
    return str(webhook.webhook_id)


def move_and_wait(
    url: str, tracking_uri: str, version: str, trigger: str, poll_interval: float, check: Callable[[str], str | None]
) -> float:
    """Move the alias to `version`, nudge serving as `trigger` says, return seconds until `check` sees it."""
    from mlflow import MlflowClient

    moved = time.monotonic()
    MlflowClient(tracking_uri).set_registered_model_alias(MODEL_NAME, "champion", version)
    if trigger == "reload":
        httpx.post(f"{url}/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    while check(url) != version:
        if time.monotonic() - moved > 60 + poll_interval:
            raise RuntimeError(f"version {version} not served {60 + poll_interval:.0f} s after the alias moved")
        time.sleep(0.01)
    return time.monotonic() - moved


TRIGGERS = ("webhook", "poll", "reload")


def swap_under_load(
    url: str, tracking_uri: str, concurrency: int, swaps: int, duration: int, poll_interval: float, workdir: Path
) -> tuple[WrkResult, list[tuple[str, str, float]]]:
    """Register `swaps` new versions, then move the alias to each while wrk loads the server."""
    versions = [
        register_iris_model(tracking_uri, MODEL_NAME, alias=None, random_state=100 + i).version for i in range(swaps)
    ]
    result: list[WrkResult] = []
    loader = threading.Thread(
        target=lambda: result.append(run_wrk(f"{url}/predict", {"features": ROW}, concurrency, duration, workdir))
    )
    loader.start()
    time.sleep(2)
    timings: list[tuple[str, str, float]] = []
    for index, version in enumerate(versions):
        trigger = TRIGGERS[index % len(TRIGGERS)]
        timings.append((version, trigger, move_and_wait(url, tracking_uri, version, trigger, poll_interval,
                                                        served_version)))  # fmt: skip
        time.sleep(2)
    loader.join(timeout=duration + 90)
    return result[0], timings


def identical_predictions(reference_url: str, ours_url: str) -> tuple[int, bool]:
    from sklearn.datasets import load_iris

    rows = load_iris().data.tolist()
    split = {"dataframe_split": {"columns": COLUMNS, "data": rows}}
    theirs = httpx.post(f"{reference_url}/invocations", json=split, timeout=60).json()["predictions"]
    ours_invocations = httpx.post(f"{ours_url}/invocations", json=split, timeout=60).json()["predictions"]
    ours_predict = [
        httpx.post(f"{ours_url}/predict", json={"features": row}, timeout=10).json()["predictions"][0] for row in rows
    ]
    return len(rows), theirs == ours_invocations == ours_predict


def print_table(rows: list[tuple[int, WrkResult, WrkResult, WrkResult]]) -> None:
    print(
        "| concurrency | load avg | mlflow models serve req/s | p50 ms | p99 ms | CPU ms/req | this server req/s "
        "| p50 ms | p99 ms | CPU ms/req | throughput ratio | no-op req/s | no-op p99 ms | predict/no-op "
        "| failed (ref/ours) |"
    )
    print("|" + "---|" * 15)
    for concurrency, ref, our, noop in rows:
        print(
            f"| {concurrency} | {ref.load_average:.1f}/{our.load_average:.1f} | {ref.requests_per_second:.0f} "
            f"| {ref.p50_ms:.1f} | {ref.p99_ms:.1f} | {ref.cpu_ms_per_request:.2f} "
            f"| {our.requests_per_second:.0f} | {our.p50_ms:.1f} | {our.p99_ms:.1f} | {our.cpu_ms_per_request:.2f} "
            f"| {our.requests_per_second / max(ref.requests_per_second, 0.001):.1f}x "
            f"| {noop.requests_per_second:.0f} | {noop.p99_ms:.1f} "
            f"| {our.requests_per_second / max(noop.requests_per_second, 0.001):.2f} | {ref.failed}/{our.failed} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--swap-concurrency", type=int, default=64)
    parser.add_argument("--poll-interval", type=float, default=1.0, help="SERVING_POLL_INTERVAL_SECONDS")
    parser.add_argument("--workers", type=int, default=2, help="workers of the multi-worker phase (0: skip it)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk (scripts/apt-packages.txt)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    venv_bin = str(Path(sys.executable).parent)
    processes: list[Process] = []
    from cryptography.fernet import Fernet

    mlflow_env = {  # the MLflow server delivers webhooks to loopback (development settings)
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    saved = {name: os.environ.get(name) for name in mlflow_env}
    os.environ.update(mlflow_env)
    try:
        mlflow_server = start_mlflow_server(workdir / "mlflow")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        tracking_uri = mlflow_server.url
        champion = register_iris_model(tracking_uri, MODEL_NAME, n_estimators=100, random_state=0)
        print(f"registered {MODEL_NAME} version {champion.version} (100 trees), alias champion")
        env = {
            **os.environ,
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",  # mlflow models serve needs it
            "MLFLOW_TRACKING_URI": tracking_uri,
        }
        serving_env = {
            **env, "SERVING_MODEL_NAME": MODEL_NAME, "SERVING_RELOAD_TOKEN": TOKEN,
            "SERVING_POLL_INTERVAL_SECONDS": str(args.poll_interval), "SERVING_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }  # fmt: skip
        ports = {"mlflow models serve": free_port(), "this server": free_port()}
        reference = Process(
            "mlflow-models-serve",
            [f"{venv_bin}/mlflow", "models", "serve", "-m", f"models:/{MODEL_NAME}@champion", "--env-manager",
             "local", "-h", "127.0.0.1", "-p", str(ports["mlflow models serve"]), "-w", "1"],
            env, workdir,
        )  # fmt: skip
        processes.append(reference)
        ours = start_server("serving", ports["this server"], 1, serving_env, workdir)
        processes.append(ours)
        reference_url = f"http://127.0.0.1:{ports['mlflow models serve']}"
        ours_url = f"http://127.0.0.1:{ports['this server']}"
        reference.wait_http(f"{reference_url}/ping")
        count, same = identical_predictions(reference_url, ours_url)
        print(f"identical predictions on the {count} iris rows (mlflow /invocations, ours /invocations and /predict): "
              f"{'yes' if same else 'NO'}")  # fmt: skip

        targets = {
            "mlflow models serve": (
                f"{reference_url}/invocations",
                {"dataframe_split": {"columns": COLUMNS, "data": [ROW]}},
                reference.popen.pid,
            ),
            "this server": (f"{ours_url}/predict", {"features": ROW}, ours.popen.pid),
        }
        for url, body, _ in targets.values():  # warm-up
            run_wrk(url, body, 8, 3, workdir)

        rows: list[tuple[int, WrkResult, WrkResult, WrkResult]] = []
        for concurrency in args.concurrency:
            ref, our = (
                run_wrk(url, body, concurrency, args.duration, workdir, pgid) for url, body, pgid in targets.values()
            )
            noop = run_wrk(f"{ours_url}/healthz", None, concurrency, args.duration, workdir, ours.popen.pid)
            rows.append((concurrency, ref, our, noop))

        print()
        print(f"single-row requests, one worker each, wrk {args.duration}s per cell, up to 2 wrk threads, "
              f"{os.cpu_count()} CPUs; load avg = 1-minute load average before the mlflow/ours runs")  # fmt: skip
        print_table(rows)
        print(
            "CPU ms/req: server process group CPU time / requests served; unlike req/s it barely depends on "
            "what else the machine runs. no-op: this server's GET /healthz under the same load."
        )

        if args.swaps:
            # Stop the reference server so it does not compete for the two cores during the swaps.
            reference.stop()
            register_webhook(tracking_uri, ours_url)
            load, timings = swap_under_load(
                ours_url, tracking_uri, args.swap_concurrency, args.swaps, max(args.duration, 10 + 5 * args.swaps),
                args.poll_interval, workdir,
            )  # fmt: skip
            print()
            print(
                f"champion swaps under load (c={args.swap_concurrency}, poll interval {args.poll_interval}s, "
                f"load avg {load.load_average:.1f}): {load.requests} requests, {load.failed} failed, "
                f"{load.requests_per_second:.0f} req/s, p99 {load.p99_ms:.1f} ms"
            )
            print("| swap | to version | trigger | alias move -> new version serving |")
            print("|---|---|---|---|")
            for index, (version, trigger, seconds) in enumerate(timings, 1):
                print(f"| {index} | {version} | {trigger} | {seconds * 1000:.0f} ms |")
            metrics = httpx.get(f"{ours_url}/metrics", timeout=5).text
            swaps_total = re.search(r"^serving_model_swaps_total (\S+)", metrics, re.M)
            batch = re.search(r"^serving_batch_rows_sum (\S+)", metrics, re.M)
            calls = re.search(r"^serving_batch_rows_count (\S+)", metrics, re.M)
            if swaps_total and batch and calls:
                print(
                    f"server metrics: swaps {float(swaps_total[1]):.0f}, "
                    f"mean rows per predict call {float(batch[1]) / max(float(calls[1]), 1):.1f}"
                )

        if args.workers > 1:
            ours.stop()
            port = free_port()
            multi_url = f"http://127.0.0.1:{port}"
            multi = start_server(
                "serving-workers", port, args.workers,
                {**serving_env, "SERVING_WORKERS_DIR": str(workdir / "workers"),
                 "SERVING_POLL_INTERVAL_SECONDS": "3600"},  # only the push can move them
                workdir,
            )  # fmt: skip
            processes.append(multi)
            deadline = time.monotonic() + 60
            while len(httpx.get(f"{multi_url}/replicas", timeout=5).json()["workers"]) < args.workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{args.workers} workers did not all report in 60 s")
                time.sleep(0.2)
            run_wrk(f"{multi_url}/predict", {"features": ROW}, 8, 3, workdir)  # warm-up
            predict = run_wrk(f"{multi_url}/predict", {"features": ROW}, 64, args.duration, workdir, multi.popen.pid)
            noop = run_wrk(f"{multi_url}/healthz", None, 64, args.duration, workdir, multi.popen.pid)
            register_webhook(tracking_uri, multi_url)
            version = register_iris_model(tracking_uri, MODEL_NAME, alias=None, random_state=999).version
            seconds = move_and_wait(multi_url, tracking_uri, version, "webhook", 0, replicas_version)
            view = httpx.get(f"{multi_url}/replicas", timeout=5).json()
            print()
            print(f"--workers {args.workers} (one replica, c=64, load avg {predict.load_average:.1f}): "
                  f"predict {predict.requests_per_second:.0f} req/s p99 {predict.p99_ms:.1f} ms, no-op "
                  f"{noop.requests_per_second:.0f} req/s, predict/no-op "
                  f"{predict.requests_per_second / max(noop.requests_per_second, 0.001):.2f}, "
                  f"failed {predict.failed}")  # fmt: skip
            workers = ", ".join(f"pid {w['pid']}: v{w['version']} ({w['last_check_outcome']})" for w in view["workers"])
            print(f"webhook swap to version {version}: every worker serving it {seconds * 1000:.0f} ms after the "
                  f"alias moved (poll interval 1 h, so by push): {workers}; agreed={view['agreed']}")  # fmt: skip
    finally:
        for process in processes:
            process.stop()
        mlflow_server.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
