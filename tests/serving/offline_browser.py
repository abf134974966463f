"""Run inside a fresh network namespace (`unshare --net`): start the model server on loopback,
render pages in headless Chromium, write what it saw. Driven by test_docs_offline.py.

    unshare --net -- python -m tests.serving.offline_browser OUTDIR

Writes OUTDIR/links.txt (the namespace's interfaces: only `lo` means no way out), and for each
page NAME: NAME.html (the DOM after scripts ran) and NAME.png (a screenshot). Pages: `docs` and
`redoc` from this server, and `cdn-docs`, FastAPI's stock Swagger UI page (assets from a CDN) for
the same schema, the control that shows what an offline page looks like without this change.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1280,1000", "--virtual-time-budget=15000",
]  # fmt: skip
PORT = 8000  # the namespace is ours alone


def chromium(url: str, out: Path, name: str) -> None:
    profile = out / f"profile-{name}"
    base = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    (out / f"{name}.html").write_text(dom.stdout)
    (out / f"{name}.log").write_text(dom.stderr[-4000:])
    subprocess.run([*base, f"--screenshot={out / f'{name}.png'}", url], capture_output=True, timeout=120)


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    (out / "links.txt").write_text(links)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # no registry here: the docs need none
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
    }
    with open(out / "uvicorn.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "serving.app.main:app", "--host", "127.0.0.1", "--port", str(PORT)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{PORT}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the model server did not start; see uvicorn.log")
            time.sleep(0.25)
        from fastapi.openapi.docs import get_swagger_ui_html

        control = get_swagger_ui_html(openapi_url=f"{base}/openapi.json", title="stock FastAPI docs")
        (out / "cdn-docs-page.html").write_bytes(control.body)
        chromium(f"{base}/docs", out, "docs")
        chromium(f"{base}/redoc", out, "redoc")
        chromium((out / "cdn-docs-page.html").as_uri(), out, "cdn-docs")
    finally:
        server.terminate()
        server.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
