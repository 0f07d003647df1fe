"""Dynamic micro-batching for the HTTP service: concurrent requests share one forward pass.

The first waiting request waits at most max_wait_ms for company, up to max_batch_size texts; a predict function
runs each batch in a worker thread (one per service, shared by every model's batcher), so the event loop keeps
accepting requests meanwhile. Requests to a sentence-pair model carry their second texts, batched alongside.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np


def _pairs(items: list) -> Optional[list[str]]:
    """The second texts of a batch's requests in order; None when no request has any (single-text models)."""
    if all(p is None for _, p, _ in items):
        return None
    if any(p is None for _, p, _ in items):
        raise ValueError("a batch mixes requests with and without text_pair")  # serve checks each request first
    return [x for _, p, _ in items for x in p]


class MicroBatcher:
    """Gathers texts of concurrent requests into batches of up to max_batch_size, waiting at most max_wait_ms."""

    def __init__(self, predict: Callable[[list[str], Optional[list[str]]], np.ndarray], max_batch_size: int,
                 max_wait_ms: float,
                 executor: Optional[ThreadPoolExecutor] = None):
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue = asyncio.Queue()
        self.own_executor = executor is None
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraclf-model")
        self.task: Optional[asyncio.Task] = None
        self.carry = None  # a request taken from the queue that did not fit into the previous batch
        self.requests = 0
        self.texts = 0
        self.batches = 0
        self.requests_per_batch: Counter = Counter()
        self.texts_per_batch: Counter = Counter()
        self.busy_s = 0.0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        if self.own_executor:
            self.executor.shutdown(wait=True)

    async def submit(self, texts: list[str], pairs: Optional[list[str]] = None) -> np.ndarray:
        """The outputs of texts (with pairs: their second texts), one row per text."""
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, pairs, fut))
        return await fut

    async def _gather(self) -> list:
        """The next batch: the first waiting request plus any that arrive within max_wait, up to max_batch_size."""
        loop = asyncio.get_running_loop()
        first, self.carry = (self.carry, None) if self.carry is not None else (await self.queue.get(), None)
        items, n = [first], len(first[0])
        deadline = loop.time() + self.max_wait
        while n < self.max_batch_size:
            try:
                nxt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if n + len(nxt[0]) > self.max_batch_size:
                self.carry = nxt  # does not fit: it heads the next batch (a request larger than a batch runs alone)
                break
            items.append(nxt)
            n += len(nxt[0])
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            items = [(t, p, f) for t, p, f in items if not f.done()]  # clients that went away
            if not items:
                continue
            texts = [t for group, _, _ in items for t in group]
            start = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self.executor, self.predict, texts, _pairs(items))
            except Exception as e:  # a model failure fails these requests, not the service
                for _, _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.busy_s += time.perf_counter() - start
            self.batches += 1
            self.requests += len(items)
            self.texts += len(texts)
            self.requests_per_batch[len(items)] += 1
            self.texts_per_batch[len(texts)] += 1
            offset = 0
            for group, _, fut in items:
                if not fut.done():
                    fut.set_result(probs[offset:offset + len(group)])
                offset += len(group)

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "texts": self.texts,
            "batches": self.batches,
            "max_requests_in_a_batch": max(self.requests_per_batch, default=0),
            "requests_per_batch": {str(k): v for k, v in sorted(self.requests_per_batch.items())},
            "texts_per_batch": {str(k): v for k, v in sorted(self.texts_per_batch.items())},
            "model_busy_s": round(self.busy_s, 4),
            "queued": self.queue.qsize() + (self.carry is not None),
        }
