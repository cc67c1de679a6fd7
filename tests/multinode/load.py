"""A closed-loop HTTP load on `s2o serve` with the README's client retry rule (multi-node tests and
benchmarks/scaling.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import requests

CLIENTS = 4
#: The README's client retry rule: on 503 wait Retry-After and retry (up to 3 times); on a connection reset
#: retry once. A request is lost when it still has no 200 after that.
RETRIES_503, RETRIES_CONNECTION = 3, 1
#: A hang bound per attempt: an attempt without an answer by then fails the test (never a hang).
ATTEMPT_TIMEOUT_S = 60


class ClosedLoopClients:
    """`clients` threads, each posting a SAR tile, waiting for the answer, then posting the next, with the retry
    rule. Records every attempt's outcome and every request's final outcome."""

    def __init__(self, url: str, body: bytes, clients: int = CLIENTS, steps: int = 1):
        self.url, self.body, self.steps = url, body, steps
        self.attempts: Counter[str] = Counter()  # '200', '503 (Retry-After 1)', 'ConnectionError', ...
        self.lost: list[str] = []
        self.hung: list[str] = []  # client threads still waiting at the end
        self.answered = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _count(self, outcome: str) -> None:
        with self.lock:
            self.attempts[outcome] += 1

    def _request(self) -> None:
        waits = resets = 0
        while True:
            try:
                answer = requests.post(
                    f"{self.url}/v1/translate?steps={self.steps}",
                    data=self.body,
                    headers={"Content-Type": "image/png"},
                    timeout=ATTEMPT_TIMEOUT_S,
                )
            except requests.exceptions.ConnectionError as err:
                self._count(type(err).__name__)
                if resets < RETRIES_CONNECTION:
                    resets += 1
                    continue
                return self._lose(type(err).__name__)
            except requests.RequestException as err:  # a read timeout (a hang) or a broken answer: no retry
                self._count(type(err).__name__)
                return self._lose(f"{type(err).__name__}: {err}")
            if answer.status_code == 200:
                self._count("200")
                with self.lock:
                    self.answered += 1
                return
            retry_after = answer.headers.get("Retry-After")
            self._count(f"{answer.status_code}" + (f" (Retry-After {retry_after})" if retry_after else ""))
            if answer.status_code == 503 and retry_after and waits < RETRIES_503:
                waits += 1
                time.sleep(float(retry_after))  # what the rule tells a client to do, not a test's wait
                continue
            return self._lose(f"{answer.status_code}: {answer.text[:200]}")

    def _lose(self, why: str) -> None:
        with self.lock:
            self.lost.append(why)

    def _client(self) -> None:
        while not self.stop.is_set():
            self._request()

    def __enter__(self) -> ClosedLoopClients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(ATTEMPT_TIMEOUT_S * (RETRIES_503 + RETRIES_CONNECTION + 1))
            if thread.is_alive():
                self.hung.append(thread.name)
