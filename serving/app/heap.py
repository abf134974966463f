"""Keeps the garbage collector out of the latency tail.

Measured with bench/serving.py's setup (one worker, concurrency 64, 2 cores, quiet machine): with
CPython's default collector, p99 was 230-310 ms at a p50 of 27 ms, for ``/predict`` and for the
no-op ``/healthz`` alike; with the collector switched off, p99 was 31 ms. The process holds a few
million long-lived objects (MLflow, pandas, scikit-learn, the model), and every full (generation
2) collection walks all of them: a pause of a couple of hundred milliseconds that every request in
flight waits out. py-spy's profiles did not show it, because a collection runs inside whichever
allocation triggers it.

``gc.freeze()`` moves every object alive now into a permanent generation that collections skip.
The collector keeps running, so the cycles requests make are still freed; it just stops walking
the heap that does not change. A swap makes a new model and drops the old one, so some time after
each swap (when the requests in flight are done with the old model) ``settle`` unfreezes,
collects once (the old model goes) and freezes again: one pause per swap instead of one every few
thousand requests.
"""

from __future__ import annotations

import gc

# Seconds after a swap before the heap is settled: requests in flight finish with the old model.
SETTLE_DELAY_SECONDS = 2.0


def settle() -> None:
    """Collect what is garbage now, then exempt everything still alive from later collections."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
