"""Whether each component of a running platform can do its job, told in words.

A component is up when it does what the others need from it, not when its port answers:

* Airflow: its own health document (``/api/v2/monitor/health``) says the metadata database,
  scheduler, triggerer and DAG processor are healthy, and their heartbeats are recent;
* MLflow: the model registry answers a search (its ``/health`` is 200 even when its database is gone);
* serving: ``/readyz`` (a model is loaded), ``/model`` (which one) and ``/replicas`` (every worker of
  every replica serves the same version);
* PostgreSQL: a real login of each application user on its database;
* S3: a signed request (a listing of the bucket) with the workload's keys.

PostgreSQL and S3 go through the collection's connectivity probe
(``plugins/module_utils/connectivity.py``, the same checks the diagnose pods and the s3_bucket role
make), run as a subprocess that gets the secrets through its environment only.

Components come from the local platform's ``endpoints.json`` (written by the platform stage; it
names the files that hold the secrets, never the secrets) or, for a cluster, from the inventory
(lab_components below; the Helm releases and their pods: runner/releases.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from runner.paths import local_home, project_dir

PROBE = Path("collections/ansible_collections/mlopslab/platform/plugins/module_utils/connectivity.py")
AIRFLOW_PARTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
# Airflow's own threshold for a live scheduler is 30 s (scheduler_health_check_threshold).
HEARTBEAT_MAX_AGE = 60.0


@dataclass(frozen=True)
class Probe:
    name: str
    url: str
    healthy: bool
    detail: str


@dataclass
class Component:
    """What to check and how: ``kind`` is airflow, mlflow, serving, postgresql or s3."""

    name: str
    kind: str
    url: str
    settings: dict[str, Any] = field(default_factory=dict)
    # environment for the probe subprocess (secrets): never printed
    secrets: dict[str, str] = field(default_factory=dict, repr=False)


def endpoints_file() -> Path:
    return local_home() / "endpoints.json"


def read_endpoints(path: Path) -> dict[str, str]:
    """Each component's URL (the base URL; older files held a probe URL or tcp://host:port)."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return {name: entry if isinstance(entry, str) else str(entry.get("url", "")) for name, entry in data.items()}


def _secret_file(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").split()[0] if path and Path(path).is_file() else ""


def components_from_endpoints(path: Path) -> list[Component]:
    """The local platform's components; an older file of bare URLs gives port checks only."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    found = []
    for name, entry in data.items():
        if isinstance(entry, str):
            found.append(Component(name, "tcp" if entry.startswith("tcp://") else "http", entry))
            continue
        settings = dict(entry)
        kind, url = str(settings.pop("kind", name)), str(settings.pop("url", ""))
        secrets: dict[str, str] = {}
        if kind == "postgresql":
            for n, login in enumerate(settings.get("logins", [])):
                secrets[f"MLOPSLAB_STATUS_PG{n}_PASSWORD"] = _secret_file(str(login.pop("password_file", "")))
        if kind == "s3":
            secrets["AWS_ACCESS_KEY_ID"] = _secret_file(str(settings.pop("access_key_id_file", "")))
            secrets["AWS_SECRET_ACCESS_KEY"] = _secret_file(str(settings.pop("secret_access_key_file", "")))
        found.append(Component(name, kind, url, settings, secrets))
    return found


def _host(c: Component) -> dict[str, str] | None:
    """The Host header of an Ingress name, when the URL goes to a node's address."""
    host = c.settings.get("host_header")
    return {"Host": str(host)} if host else None


def _unreachable(name: str, url: str, exc: Exception) -> Probe:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        reason = f"nothing answers at {urlsplit(url).netloc} ({reason}): the process is not running"
    return Probe(name, url, False, reason)


def _age(stamp: str | None, now: datetime) -> float | None:
    if not stamp:
        return None
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (now - moment).total_seconds()


def airflow_verdict(document: dict[str, Any], now: datetime, max_age: float = HEARTBEAT_MAX_AGE) -> tuple[bool, str]:
    """Read Airflow's health document: every part healthy, every heartbeat younger than max_age."""
    problems, fine = [], []
    for part in AIRFLOW_PARTS:
        entry = document.get(part)
        if not isinstance(entry, dict):
            problems.append(f"{part} not reported")
            continue
        words = part.replace("_", " ")
        age = _age(entry.get(f"latest_{part}_heartbeat"), now)
        if entry.get("status") != "healthy":
            last = f", last heartbeat {age:.0f} s ago" if age is not None else ", no heartbeat recorded"
            problems.append(f"{words} {entry.get('status') or 'unknown'}{last if part != 'metadatabase' else ''}")
        elif age is not None and age > max_age:
            problems.append(f"{words} heartbeat {age:.0f} s old")
        else:
            fine.append(words if age is None else f"{words} ({age:.0f} s)")
    if problems:
        hint = " (the metadata database is unreachable)" if "metadatabase" in " ".join(problems) else ""
        return False, "; ".join(problems) + hint
    return True, "healthy: " + ", ".join(fine)


def check_airflow(c: Component, timeout: float) -> Probe:
    url = c.url.rstrip("/") + "/api/v2/monitor/health"
    try:
        response = httpx.get(url, timeout=timeout, headers=_host(c))
        document = response.json()
    except httpx.HTTPError as exc:
        return _unreachable(c.name, c.url, exc)
    except ValueError:
        return Probe(c.name, c.url, False, f"HTTP {response.status_code}, not Airflow's health document")
    healthy, words = airflow_verdict(document, datetime.now(UTC))
    return Probe(c.name, c.url, healthy, words)


def _mlflow_error(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = " ".join(str(body.get("message", "")).split())
        code = str(body.get("error_code", ""))
    except ValueError:
        message, code = " ".join(response.text.split()), ""
    if any(word in message for word in ("OperationalError", "could not connect", "Connection refused")):
        return f"the registry cannot reach its backend store (PostgreSQL): {message[:200]}"
    return f"the registry answered HTTP {response.status_code} {code}: {message[:200]}".strip()


def check_mlflow(c: Component, timeout: float) -> Probe:
    url = c.url.rstrip("/") + "/api/2.0/mlflow/registered-models/search"
    try:
        response = httpx.get(url, params={"max_results": 10}, timeout=timeout, headers=_host(c))
    except httpx.HTTPError as exc:
        return _unreachable(c.name, c.url, exc)
    if response.status_code != 200:
        return Probe(c.name, c.url, False, _mlflow_error(response))
    models = response.json().get("registered_models", [])
    return Probe(c.name, c.url, True, f"the registry answers ({len(models)} registered model(s) listed)")


def check_serving(c: Component, timeout: float) -> Probe:
    """A model is loaded (/readyz) and every worker of every replica serves one version (/replicas)."""
    base = c.url.rstrip("/")
    try:
        ready = httpx.get(f"{base}/readyz", timeout=timeout, headers=_host(c))
        info = httpx.get(f"{base}/model", timeout=timeout, headers=_host(c))
    except httpx.HTTPError as exc:
        return _unreachable(c.name, c.url, exc)
    model = info.json() if info.status_code == 200 else {}
    if ready.status_code != 200:
        error = (model.get("last_error") or {}).get("message") or ready.text
        return Probe(c.name, c.url, False, f"no model loaded: {' '.join(str(error).split())[:200]}")
    try:
        view = httpx.get(f"{base}/replicas", timeout=timeout, headers=_host(c)).json()
        workers, versions = len(view["workers"]), dict(view["versions"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return Probe(c.name, c.url, False, f"up, but GET /replicas failed: {exc}")
    if not view.get("agreed"):
        unreachable = [peer.get("url") for peer in view.get("peers", []) if not peer.get("reachable")]
        detail = f"workers disagree: {versions}" + (f", unreachable peers {unreachable}" if unreachable else "")
        return Probe(c.name, c.url, False, detail)
    words = f"serves {model.get('name')} version {view['version']} on all {workers} worker(s)"
    error = model.get("last_error")
    if error:
        words += f" (last registry check failed: {' '.join(str(error.get('message', '')).split())[:120]})"
    return Probe(c.name, c.url, True, words)


def check_tcp(c: Component, timeout: float) -> Probe:
    import socket

    parts = urlsplit(c.url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=timeout):
            return Probe(c.name, c.url, True, "accepting connections (port check only)")
    except OSError as exc:
        return Probe(c.name, c.url, False, str(exc))


def check_http(c: Component, timeout: float) -> Probe:
    try:
        response = httpx.get(c.url, timeout=timeout)
    except httpx.HTTPError as exc:
        return _unreachable(c.name, c.url, exc)
    return Probe(c.name, c.url, response.status_code < 400, f"HTTP {response.status_code} (port check only)")


def _probe_spec(components: list[Component]) -> tuple[dict[str, Any], dict[str, str], list[tuple[Component, int]]]:
    """One probe run for every PostgreSQL and S3 component: its spec, env and which check is whose."""
    checks: list[dict[str, Any]] = []
    env: dict[str, str] = {}
    owners: list[tuple[Component, int]] = []
    for c in components:
        env.update(c.secrets)
        if c.kind == "postgresql":
            for n, login in enumerate(c.settings.get("logins", [])):
                checks.append(
                    {"kind": "postgresql", "name": f"{login['user']}@{login['database']}",
                     "host": c.settings["host"], "port": int(c.settings["port"]), "database": login["database"],
                     "user": login["user"], "password_env": f"MLOPSLAB_STATUS_PG{n}_PASSWORD"}
                )  # fmt: skip
                owners.append((c, len(checks) - 1))
        elif c.kind == "s3":
            checks.append(
                {"kind": "s3", "name": "list the bucket", "bucket": c.settings["bucket"],
                 "region": c.settings["region"], "endpoint_url": c.settings.get("endpoint_url", ""),
                 "prefix": c.settings.get("prefix", ""), "operations": ["list"],
                 "access_key_id_env": "AWS_ACCESS_KEY_ID", "secret_access_key_env": "AWS_SECRET_ACCESS_KEY"}
            )  # fmt: skip
            owners.append((c, len(checks) - 1))
    return {"checks": checks}, env, owners


def run_probe(spec: dict[str, Any], env: dict[str, str], timeout: float = 90) -> list[dict[str, Any]]:
    """The connectivity probe's verdicts for ``spec``, run with ``env`` (the secrets) as its only extra environment."""
    probe = project_dir() / PROBE
    base = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "PG"))}
    proc = subprocess.run(
        [sys.executable, str(probe), "-"],
        input=json.dumps(spec),
        env={**base, **env, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    verdicts = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if len(verdicts) != len(spec["checks"]):
        raise RuntimeError(f"the connectivity probe failed: {' '.join(proc.stderr.split())[-300:]}")
    return verdicts


def _probe_results(components: list[Component]) -> dict[str, Probe]:
    spec, env, owners = _probe_spec(components)
    if not spec["checks"]:
        return {}
    try:
        verdicts = run_probe(spec, env)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {c.name: Probe(c.name, c.url, False, str(exc)) for c, _ in owners}
    grouped: dict[str, list[dict[str, Any]]] = {}
    by_name = {c.name: c for c, _ in owners}
    for c, index in owners:
        grouped.setdefault(c.name, []).append(verdicts[index])
    results = {}
    for name, found in grouped.items():
        c = by_name[name]
        bad = [v for v in found if not v["ok"]]
        if bad and len({v["summary"] for v in bad}) == 1:
            words = f"{bad[0]['summary']} ({', '.join(v['name'] for v in bad)})"
        elif bad:
            words = "; ".join(f"{v['name']}: {v['summary']}" for v in bad)
        else:
            words = " ".join(v["summary"] for v in found)
        results[name] = Probe(name, c.url, not bad, words)
    return results


CHECKS: dict[str, Callable[[Component, float], Probe]] = {
    "airflow": check_airflow,
    "mlflow": check_mlflow,
    "serving": check_serving,
    "tcp": check_tcp,
    "http": check_http,
}


def probe_components(components: list[Component], timeout: float = 5.0) -> list[Probe]:
    """Every component's verdict, in the order given."""
    probed = _probe_results(components)
    results = []
    for c in components:
        if c.name in probed:
            results.append(probed[c.name])
        elif c.kind in CHECKS:
            results.append(CHECKS[c.kind](c, timeout))
        else:
            results.append(Probe(c.name, c.url, False, f"unknown component kind {c.kind!r}"))
    return results


def probe_endpoints(path: Path, timeout: float = 5.0) -> list[Probe]:
    """Probe every component listed in the local platform's endpoints file."""
    return probe_components(components_from_endpoints(path), timeout)


LAB_VARIABLES = [
    "mlopslab_releases",
    "mlopslab_ingress_address",
    "mlopslab_mlflow_host",
    "mlopslab_airflow_host",
    "mlopslab_serving_host",
    "mlopslab_db_host",
    "mlopslab_db_port",
    "mlopslab_airflow_db_name",
    "mlopslab_airflow_db_user",
    "mlopslab_airflow_db_password",
    "mlopslab_mlflow_db_name",
    "mlopslab_mlflow_db_user",
    "mlopslab_mlflow_db_password",
    "mlopslab_s3_bucket",
    "mlopslab_s3_region",
    "mlopslab_s3_endpoint_url",
    "mlopslab_s3_artifact_prefix",
    "mlopslab_aws_access_key_id",
    "mlopslab_aws_secret_access_key",
]


def lab_components(values: dict[str, Any]) -> tuple[list[Component], list[str]]:
    """A cluster's components as seen from the control node, from the inventory's values: the web
    services through the ingress (the node address when mlopslab_ingress_address is set, with the
    Ingress name as Host header; else the name itself, as /etc/hosts resolves it), PostgreSQL and
    S3 directly; a release the inventory leaves out of mlopslab_releases is not looked for. Also
    returns notes on what could not be checked (secrets missing: no vault)."""
    components, notes = [], []
    address = str(values.get("mlopslab_ingress_address") or "")
    releases = values.get("mlopslab_releases")
    if releases is None:  # an inventory that does not say installs them all
        releases = ["mlflow", "airflow", "serving"]
    for name, variable in (("mlflow", "mlopslab_mlflow_host"), ("airflow", "mlopslab_airflow_host"),
                           ("serving", "mlopslab_serving_host")):  # fmt: skip
        host = str(values.get(variable) or "")
        if host and name in releases:
            settings = {"host_header": host} if address else {}
            components.append(Component(name, name, f"http://{address or host}", settings))
    logins: list[dict[str, Any]] = []
    secrets: dict[str, str] = {}
    for app in ("airflow", "mlflow"):
        password = values.get(f"mlopslab_{app}_db_password")
        if password is None:
            continue
        secrets[f"MLOPSLAB_STATUS_PG{len(logins)}_PASSWORD"] = str(password)
        logins.append({"database": values[f"mlopslab_{app}_db_name"], "user": values[f"mlopslab_{app}_db_user"]})
    if values.get("mlopslab_db_host") and logins:
        port = int(values.get("mlopslab_db_port") or 5432)
        pg_settings: dict[str, Any] = {"host": values["mlopslab_db_host"], "port": port, "logins": logins}
        components.append(Component("postgresql", "postgresql", f"tcp://{values['mlopslab_db_host']}:{port}",
                                    pg_settings, secrets))  # fmt: skip
    elif values.get("mlopslab_db_host"):
        notes.append("PostgreSQL not checked: the database passwords are in the vault (pass --vault-password-file)")
    keys = (values.get("mlopslab_aws_access_key_id"), values.get("mlopslab_aws_secret_access_key"))
    if values.get("mlopslab_s3_bucket") and None not in keys:
        settings = {
            "bucket": values["mlopslab_s3_bucket"],
            "region": values.get("mlopslab_s3_region", "us-east-1"),
            "endpoint_url": values.get("mlopslab_s3_endpoint_url", ""),
            "prefix": values.get("mlopslab_s3_artifact_prefix", ""),
        }
        secrets_s3 = {"AWS_ACCESS_KEY_ID": str(keys[0]), "AWS_SECRET_ACCESS_KEY": str(keys[1])}
        components.append(Component("s3", "s3", f"s3://{settings['bucket']}", settings, secrets_s3))
    elif values.get("mlopslab_s3_bucket"):
        notes.append("S3 not checked: the AWS keys are in the vault (pass --vault-password-file)")
    return components, notes
