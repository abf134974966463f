"""Benchmark: this model server against `mlflow models serve` on the same registered model.

    .venv/bin/python bench/serving.py [--duration 15] [--concurrency 16 64] [--swaps 3]

What it does, all on 127.0.0.1 in one run (the machine is shared and noisy: only figures from
the same run compare):
  1. starts a lean MLflow server (sqlite, proxied artifacts) and registers an iris RandomForest
     (100 trees) as `bench_iris`, alias champion;
  2. starts `mlflow models serve --env-manager local` (one worker) and this server
     (`uvicorn serving.app.main:app --workers 1`) on that model;
  3. drives each with wrk (single-row POST bodies, a Lua script) at each concurrency and prints
     req/s, p50 and p99 for both and the throughput ratio;
  4. moves the champion --swaps times while wrk loads this server, and prints the failed requests
     (non-2xx + socket errors) and the time from each alias move to the new version serving.
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
from dataclasses import dataclass  # noqa: E402

import httpx  # noqa: E402

from tests.support.mlflow_server import free_port, register_iris_model, start_mlflow_server  # noqa: E402

MODEL_NAME = "bench_iris"
ROW = [5.1, 3.5, 1.4, 0.2]
COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
TOKEN = secrets.token_urlsafe(24)  # this run's reload token


@dataclass
class WrkResult:
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
    url: str, body: dict[str, object], concurrency: int, duration: int, workdir: Path, pgid: int | None = None
) -> WrkResult:
    script = workdir / f"post-{abs(hash(json.dumps(body))) % 10**8}.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = \'{json.dumps(body)}\'\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    threads = min(2, concurrency)
    cpu_before = group_cpu_seconds(pgid) if pgid else 0.0
    output = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration}s", "--timeout", "5s", "--latency",
         "-s", str(script), url],
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
    return WrkResult(rps, p50, p99, total, failed, cpu)


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


def swap_under_load(
    url: str, tracking_uri: str, concurrency: int, swaps: int, duration: int, workdir: Path
) -> tuple[WrkResult, list[tuple[str, str, float]]]:
    """Register `swaps` new versions, then move the alias to each while wrk loads the server."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
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
        # Alternate the two triggers: the pipeline's POST /reload, and the poller alone.
        trigger = "poll" if index % 2 else "reload"
        moved = time.monotonic()
        client.set_registered_model_alias(MODEL_NAME, "champion", version)
        if trigger == "reload":
            httpx.post(f"{url}/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        while served_version(url) != version:
            if time.monotonic() - moved > 60:
                raise RuntimeError(f"version {version} not served 60 s after the alias moved")
            time.sleep(0.01)
        timings.append((version, trigger, time.monotonic() - moved))
        time.sleep(2)
    loader.join(timeout=duration + 90)
    return result[0], timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--swap-concurrency", type=int, default=64)
    parser.add_argument("--poll-interval", type=float, default=1.0, help="SERVING_POLL_INTERVAL_SECONDS")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk (scripts/apt-packages.txt)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    venv_bin = str(Path(sys.executable).parent)
    processes: list[Process] = []
    mlflow_server = start_mlflow_server(workdir / "mlflow")
    try:
        tracking_uri = mlflow_server.url
        champion = register_iris_model(tracking_uri, MODEL_NAME, n_estimators=100, random_state=0)
        print(f"registered {MODEL_NAME} version {champion.version} (100 trees), alias champion")
        env = {
            **os.environ,
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",  # mlflow models serve needs it
            "MLFLOW_TRACKING_URI": tracking_uri,
        }
        ports = {"mlflow models serve": free_port(), "this server": free_port()}
        reference = Process(
            "mlflow-models-serve",
            [f"{venv_bin}/mlflow", "models", "serve", "-m", f"models:/{MODEL_NAME}@champion", "--env-manager",
             "local", "-h", "127.0.0.1", "-p", str(ports["mlflow models serve"]), "-w", "1"],
            env, workdir,
        )  # fmt: skip
        processes.append(reference)
        ours = Process(
            "serving",
            [f"{venv_bin}/python", "-m", "uvicorn", "serving.app.main:app", "--host", "127.0.0.1", "--port",
             str(ports["this server"]), "--workers", "1", "--no-access-log", "--log-level", "warning"],
            {**env, "SERVING_MODEL_NAME": MODEL_NAME, "SERVING_RELOAD_TOKEN": TOKEN,
             "SERVING_POLL_INTERVAL_SECONDS": str(args.poll_interval)},
            workdir,
        )  # fmt: skip
        processes.append(ours)
        reference_url = f"http://127.0.0.1:{ports['mlflow models serve']}"
        ours_url = f"http://127.0.0.1:{ports['this server']}"
        reference.wait_http(f"{reference_url}/ping")
        ours.wait_http(f"{ours_url}/readyz")

        targets = {
            "mlflow models serve": (
                f"{reference_url}/invocations",
                {"dataframe_split": {"columns": COLUMNS, "data": [ROW]}},
                reference.popen.pid,
            ),
            "this server": (f"{ours_url}/predict", {"features": ROW}, ours.popen.pid),
        }
        for name, (url, body, _) in targets.items():  # both answer the seed row the same way
            answer = httpx.post(url, json=body, timeout=30).json()
            print(f"{name}: {json.dumps(answer)}")
            run_wrk(url, body, 8, 3, workdir)  # warm-up

        rows: list[tuple[int, WrkResult, WrkResult]] = []
        for concurrency in args.concurrency:
            results = [
                run_wrk(url, body, concurrency, args.duration, workdir, pgid) for url, body, pgid in targets.values()
            ]
            rows.append((concurrency, results[0], results[1]))

        print()
        print(f"single-row requests, one worker each, wrk {args.duration}s per cell, 2 wrk threads")
        print(f"load average before the runs: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        header = (
            "| concurrency | mlflow models serve req/s | p50 ms | p99 ms | CPU ms/req | this server req/s "
            "| p50 ms | p99 ms | CPU ms/req | throughput ratio | CPU/req ratio | failed (ref/ours) |"
        )
        print(header)
        print("|" + "---|" * 12)
        for concurrency, ref, our in rows:
            print(
                f"| {concurrency} | {ref.requests_per_second:.0f} | {ref.p50_ms:.1f} | {ref.p99_ms:.1f} "
                f"| {ref.cpu_ms_per_request:.2f} "
                f"| {our.requests_per_second:.0f} | {our.p50_ms:.1f} | {our.p99_ms:.1f} | {our.cpu_ms_per_request:.2f} "
                f"| {our.requests_per_second / max(ref.requests_per_second, 0.001):.1f}x "
                f"| {ref.cpu_ms_per_request / max(our.cpu_ms_per_request, 0.001):.1f}x | {ref.failed}/{our.failed} |"
            )
        print(
            "CPU ms/req: server process group CPU time / requests served; unlike req/s it barely depends on "
            "what else the machine runs"
        )

        if args.swaps:
            # Stop the reference server so it does not compete for the two cores during the swaps.
            reference.stop()
            load, timings = swap_under_load(
                ours_url, tracking_uri, args.swap_concurrency, args.swaps, max(args.duration, 10 + 5 * args.swaps),
                workdir,
            )  # fmt: skip
            print()
            print(
                f"champion swaps under load (c={args.swap_concurrency}, poll interval {args.poll_interval}s): "
                f"{load.requests} requests, {load.failed} failed, {load.requests_per_second:.0f} req/s, "
                f"p99 {load.p99_ms:.1f} ms"
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
    finally:
        for process in processes:
            process.stop()
        mlflow_server.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
