"""Micro-batching: concurrent requests share one model predict call.

A tree ensemble costs about the same to predict 1 row as 100 (the per-call dispatch over the
trees dominates), so under concurrency one call for all waiting rows multiplies throughput.
The collector takes the first waiting request, then whatever else is queued, waiting at most
`max_wait` for more and stopping at `max_rows` (a request is never split; one larger than
`max_rows` runs alone). Predict calls run one at a time in a single worker thread, so requests
arriving during a call form the next batch. Rows are grouped by the model object the request
started with, so a swap never moves a request to another model. If a batched call raises, each
request of the batch is retried alone, so one bad request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .metrics import ServingMetrics
from .model_store import FloatRows, LoadedModel

log = logging.getLogger("serving.batcher")


@dataclass
class _Pending:
    model: LoadedModel
    rows: FloatRows
    future: asyncio.Future[npt.NDArray[Any]]


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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def predict(self, model: LoadedModel, rows: FloatRows) -> npt.NDArray[Any]:
        """Predictions for `rows` (2-D float64) by `model`, possibly computed with other requests."""
        if self._task is None:
            return await self._call(model, rows)
        future: asyncio.Future[npt.NDArray[Any]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(model, rows, future))
        return await future

    async def _call(self, model: LoadedModel, rows: FloatRows) -> npt.NDArray[Any]:
        self.metrics.batch_rows.observe(len(rows))
        self.metrics.predicted_rows.inc(len(rows))
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, model.predict_rows, rows)
        if len(result) != len(rows):
            raise RuntimeError(f"the model returned {len(result)} predictions for {len(rows)} rows")
        return result

    async def _collect(self) -> list[_Pending]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, total = [first], len(first.rows)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
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
            groups: dict[int, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(id(pending.model), []).append(pending)
            for group in groups.values():
                try:
                    await self._predict_group(group)
                except Exception as exc:  # never leave a request waiting forever
                    log.exception("micro-batcher failed a batch")
                    for pending in group:
                        _settle(pending, exc=exc)

    async def _predict_group(self, group: list[_Pending]) -> None:
        rows = group[0].rows if len(group) == 1 else np.concatenate([p.rows for p in group])
        try:
            result = await self._call(group[0].model, rows)
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0], exc=exc)
                return
            for pending in group:  # isolate the request that made the batch fail
                try:
                    _settle(pending, result=await self._call(pending.model, pending.rows))
                except Exception as single_exc:
                    _settle(pending, exc=single_exc)
            return
        offset = 0
        for pending in group:
            count = len(pending.rows)
            _settle(pending, result=result[offset : offset + count])
            offset += count


def _settle(pending: _Pending, result: npt.NDArray[Any] | None = None, exc: BaseException | None = None) -> None:
    if pending.future.done():
        return
    if exc is not None:
        pending.future.set_exception(exc)
    else:
        pending.future.set_result(result if result is not None else np.empty(0))
