"""Micro-batching: concurrent requests share one model predict call.

A tree ensemble costs about the same to predict 1 row as 100 (the per-call dispatch over the
trees dominates), so under concurrency one call for all waiting rows multiplies throughput.
The collector takes the first waiting request, lets the event loop run once more (requests read
in the same pass over the sockets reach the queue then), takes whatever else is queued, and
waits at most `max_wait` for more (default 0: with the forest path a model call costs about as
much as two requests' HTTP handling, so waiting only adds latency, and a lone request never
waits for company); it stops at `max_rows` (a request is never split; one larger than
`max_rows` runs alone). Rows are grouped by the model object the request started with (and by whether
probabilities were asked for), so a swap never moves a request to another model. If a batched
call raises, each request of the batch is retried alone, so one bad request cannot fail the
others.

Where a call runs: models whose predictions are computed by the forest path (`predictor ==
"forest"`, about 1 ms per call) run on the event loop itself. Profiles showed why: a predict
thread running Python holds the GIL, and the event loop waiting for it loses up to a switch
interval (5 ms) each time it wants it back, which is where the tail latency came from; the
thread bought no parallelism, since the loop cannot parse requests without the GIL either.
Other models (seconds-long pyfunc calls are possible) run one at a time in a worker thread, so
the loop stays responsive for health checks.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .metrics import ServingMetrics
from .model_store import FloatRows, LoadedModel, cancel_and_wait

log = logging.getLogger("serving.batcher")

Prediction = tuple[npt.NDArray[Any], npt.NDArray[Any] | None]  # predictions, probabilities


@dataclass
class _Pending:
    model: LoadedModel
    rows: FloatRows
    with_proba: bool
    future: asyncio.Future[Prediction]


class MicroBatcher:
    def __init__(self, max_rows: int, max_wait_seconds: float, metrics: ServingMetrics, enabled: bool = True) -> None:
        self.max_rows = max_rows
        self.max_wait = max_wait_seconds
        self.metrics = metrics
        self.enabled = enabled
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._carry: _Pending | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def predict(self, model: LoadedModel, rows: FloatRows, with_proba: bool = False) -> Prediction:
        """Predictions (and probabilities if asked) for `rows` (2-D float64) by `model`, possibly
        computed together with other requests."""
        if self._task is None:
            return await self._call(model, rows, with_proba)
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(model, rows, with_proba, future))
        return await future

    async def _call(self, model: LoadedModel, rows: FloatRows, with_proba: bool) -> Prediction:
        self.metrics.batch_rows.observe(len(rows))
        self.metrics.predicted_rows.inc(len(rows))
        if model.predictor == "forest":
            result = _predict(model, rows, with_proba)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor, _predict, model, rows, with_proba)
        predictions, probabilities = result
        if len(predictions) != len(rows) or (probabilities is not None and len(probabilities) != len(rows)):
            raise RuntimeError(f"the model returned {len(predictions)} predictions for {len(rows)} rows")
        return result

    async def _collect(self) -> list[_Pending]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, total = [first], len(first.rows)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        await asyncio.sleep(0)  # one more pass of the loop: requests read with this one get queued
        while total < self.max_rows:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if total + len(item.rows) > self.max_rows:
                self._carry = item
                break
            batch.append(item)
            total += len(item.rows)
        return [p for p in batch if not p.future.done()]  # drop requests whose client went away

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            groups: dict[tuple[int, bool], list[_Pending]] = {}
            for pending in batch:
                groups.setdefault((id(pending.model), pending.with_proba), []).append(pending)
            for group in groups.values():
                try:
                    await self._predict_group(group)
                except Exception as exc:  # never leave a request waiting forever
                    log.exception("micro-batcher failed a batch")
                    for pending in group:
                        _settle(pending, exc=exc)

    async def _predict_group(self, group: list[_Pending]) -> None:
        first = group[0]
        rows = first.rows if len(group) == 1 else np.concatenate([p.rows for p in group])
        try:
            predictions, probabilities = await self._call(first.model, rows, first.with_proba)
        except Exception as exc:
            if len(group) == 1:
                _settle(first, exc=exc)
                return
            for pending in group:  # isolate the request that made the batch fail
                try:
                    _settle(pending, result=await self._call(pending.model, pending.rows, pending.with_proba))
                except Exception as single_exc:
                    _settle(pending, exc=single_exc)
            return
        offset = 0
        for pending in group:
            end = offset + len(pending.rows)
            part = probabilities[offset:end] if probabilities is not None else None
            _settle(pending, result=(predictions[offset:end], part))
            offset = end


def _predict(model: LoadedModel, rows: FloatRows, with_proba: bool) -> Prediction:
    predictions = model.predict_rows(rows)
    if not with_proba or model.predict_proba_rows is None:
        return predictions, None
    return predictions, model.predict_proba_rows(rows)


def _settle(pending: _Pending, result: Prediction | None = None, exc: BaseException | None = None) -> None:
    if pending.future.done():
        return
    if exc is not None:
        pending.future.set_exception(exc)
    else:
        pending.future.set_result(result if result is not None else (np.empty(0), None))
