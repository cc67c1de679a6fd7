"""Serving under abuse (issue 24): do legitimate clients keep being served while attackers push?

    python benchmarks/serve_abuse.py [--model BUNDLE] [--seconds-per-case 30] [--baseline-seconds S]
                                     [--clients 4] [--slow-connections 100] [--json FILE]

Loopback only, bounded in count and time (about 3-4 minutes with the defaults on 2 cores). One live
Serve with serve/config.yaml's application (1024 px images allowed), on a local Ray cluster of this
process's own. Cases run one after another on the same server; in each, --clients legitimate
closed-loop clients post a 32x32 8-bit noise PNG at steps=1 for the whole case, following the
documented client retry rule (on 503 with Retry-After: wait that long and retry, at most 3 times; on a
connection error: retry once). A legitimate request succeeds when it finally gets 200; its latency is
from its first send to its final answer, retries included.

1. baseline: no attack (a shorter case);
2. costly: an attacker posts the ~1 KB blank 1024x1024 PNG (1,849 tiles) one at a time (expect 413 too_costly);
3. slow bodies: --slow-connections connections each send headers with Content-Length 100000 and 10
   bytes, then idle; each is re-opened as soon as it is answered (expect 408);
4. decode bombs: alternately a PNG whose header declares 60000x60000 px and a ~0.5 MB TIFF of
   1024x1024 float64 zeros in one deflated 8192x8192 block (512 MB decoded) (expect 413); the model
   replica's peak RSS growth is printed;
5. replica kill: the SarTranslator replica is killed (ray.kill, no_restart) a quarter into the case;
   time to recovery = from the kill until GET /healthz is 200 again (polled every 0.2 s).

Per case: the legitimate requests' count, success share, p50/p99/max latency, their final non-200
outcomes and 503 retries, the replica's peak RSS growth, and the attack's own outcome (statuses and
error kinds seen). The last line is `min_success=X.XXX`: the lowest legitimate success share over
the cases (target >= 0.99). Without --model an untrained tiny-preset student is used.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import selectors
import socket
import struct
import sys
import tempfile
import threading
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from s2o_platform.data.normalization import SarNormalization  # noqa: E402
from s2o_platform.data.store import StoreMetadata  # noqa: E402
from s2o_platform.serving.runner import free_port  # noqa: E402
from s2o_platform.serving.settings import DEFAULT_CONFIG  # noqa: E402
from s2o_platform.train.untrained import write_untrained_bundles  # noqa: E402

REQUEST_TIMEOUT_S = 60.0  # a client's limit per attempt (serve/config.yaml's request_timeout_s)
RETRIES_503 = 3
HEALTH_EVERY_S = 0.2
SETTLE_LIMIT_S = 60.0  # before each case: wait at most this long for /healthz 200
RECOVERY_LIMIT_S = 120.0
SLOW_BODY_LENGTH = 100_000
SLOW_BODY_FIRST = b"\x89PNG\r\n\x1a\n\x00\x00"  # 10 bytes
TIFF_BLOCK = 8192  # px a side of the TIFF bomb's one block (GDAL accepts blocks larger than the image)


# ---------------------------------------------------------------- bodies


def noise_png(side: int, seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def blank_png(side: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_bomb(side: int = 60000) -> bytes:
    """A valid-looking PNG whose IHDR declares side x side 8-bit grey, with a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )


def tiff_bomb(side: int = 1024, block: int = TIFF_BLOCK) -> bytes:
    """A small TIFF (side x side float64 zeros) stored as one deflated block of block x block px."""
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as memfile:
            with memfile.open(
                driver="GTiff",
                width=side,
                height=side,
                count=1,
                dtype="float64",
                tiled=True,
                blockxsize=block,
                blockysize=block,
                compress="deflate",
            ) as ds:
                ds.write(np.zeros((1, side, side)))
            return memfile.read()


# ---------------------------------------------------------------- helpers


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def error_kind(response) -> str:
    try:
        return str(response.json().get("error"))
    except ValueError:
        return "non-json"


def health_status(url: str, timeout: float = 5.0) -> int | str:
    import requests

    try:
        return requests.get(f"{url}/healthz", timeout=timeout).status_code
    except requests.RequestException as err:
        return type(err).__name__


def translator_replicas(app_name: str) -> list:
    """Alive SarTranslator replica actors of the application (ray.util.state: name, pid)."""
    import ray
    from ray.util.state import list_actors

    from s2o_platform.serving.app import DEPLOYMENT

    # our own cluster's address: other local clusters may run on this machine
    address = ray.get_runtime_context().gcs_address
    return [
        a
        for a in list_actors(address=address, filters=[("state", "=", "ALIVE")])
        if DEPLOYMENT in (a.class_name or "") and app_name in f"{a.class_name} {a.name}"
    ]


class Outcomes:
    """Thread-safe counter of outcome labels ('413 too_costly', '408', 'ConnectionError', ...)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.seconds: list[float] = []

    def add(self, label: str, seconds: float | None = None) -> None:
        with self.lock:
            self.counts[label] += 1
            if seconds is not None:
                self.seconds.append(seconds)

    def text(self) -> str:
        with self.lock:
            return (
                ", ".join(f"{label} x{n}" for label, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
                or "none"
            )


# ---------------------------------------------------------------- legitimate clients


class Legit:
    """Closed-loop clients following the client retry rule; records every request's final outcome."""

    def __init__(self, url: str, clients: int, steps: int = 1, side: int = 32):
        self.url = f"{url}/v1/translate?steps={steps}"
        self.bodies = [noise_png(side, seed) for seed in range(clients)]
        self.lock = threading.Lock()
        self.records: list[tuple[bool, float, str]] = []  # (success, seconds, final outcome)
        self.retries_503 = 0
        self.retries_conn = 0

    def one(self, session, body: bytes) -> tuple[bool, float, str]:
        import requests

        started = time.perf_counter()
        waits = conn_retried = 0
        while True:
            try:
                answer = session.post(
                    self.url, data=body, headers={"Content-Type": "image/png"}, timeout=REQUEST_TIMEOUT_S
                )
            except requests.exceptions.ConnectionError as err:
                if conn_retried:
                    return False, time.perf_counter() - started, type(err).__name__
                conn_retried = 1
                with self.lock:
                    self.retries_conn += 1
                continue
            except requests.RequestException as err:  # read timeout and the like: no retry
                return False, time.perf_counter() - started, type(err).__name__
            if answer.status_code == 503 and "Retry-After" in answer.headers and waits < RETRIES_503:
                waits += 1
                with self.lock:
                    self.retries_503 += 1
                try:
                    time.sleep(float(answer.headers["Retry-After"]))
                except ValueError:
                    time.sleep(1.0)
                continue
            label = "200" if answer.status_code == 200 else f"{answer.status_code} {error_kind(answer)}"
            return answer.status_code == 200, time.perf_counter() - started, label

    def run(self, stop: threading.Event) -> list[threading.Thread]:
        def loop(body: bytes):
            import requests

            with requests.Session() as session:
                while not stop.is_set():
                    record = self.one(session, body)
                    with self.lock:
                        self.records.append(record)

        threads = [threading.Thread(target=loop, args=(body,), daemon=True) for body in self.bodies]
        for thread in threads:
            thread.start()
        return threads

    def summary(self) -> dict:
        with self.lock:
            records = list(self.records)
        ok = sum(1 for success, _, _ in records if success)
        latencies = [seconds for _, seconds, _ in records]
        failures = Counter(label for success, _, label in records if not success)
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        return {
            "requests": len(records),
            "ok": ok,
            "success": ok / len(records) if records else 0.0,
            "p50_ms": None if p50 is None else 1000 * p50,
            "p99_ms": None if p99 is None else 1000 * p99,
            "max_ms": 1000 * max(latencies) if latencies else None,
            "failures": dict(failures),
            "retries_503": self.retries_503,
            "retries_connection": self.retries_conn,
        }


# ---------------------------------------------------------------- attacks


def repeat_posts(
    url: str, bodies: list[tuple[str, str, bytes]], stop: threading.Event, outcomes: Outcomes
) -> None:
    """Post the (label, content type, body)s in turn, one at a time, until `stop`; count 'label: status kind'."""
    import requests

    with requests.Session() as session:
        i = 0
        while not stop.is_set():
            label, content_type, body = bodies[i % len(bodies)]
            i += 1
            started = time.perf_counter()
            try:
                answer = session.post(
                    f"{url}/v1/translate", data=body, headers={"Content-Type": content_type}, timeout=90
                )
                outcome = f"{answer.status_code} {error_kind(answer)}" if answer.status_code != 200 else "200"
            except requests.RequestException as err:
                outcome = type(err).__name__
                time.sleep(0.2)
            outcomes.add(f"{label}{outcome}", time.perf_counter() - started)


def slow_bodies(url: str, connections: int, stop: threading.Event, outcomes: Outcomes) -> None:
    """`connections` sockets that send headers (Content-Length 100000) and 10 bytes, then idle; each is
    re-opened as soon as the server answers it. Counts the answers' statuses (and seconds to answer)."""
    parts = urlsplit(url)
    head = (
        f"POST {parts.path.rstrip('/')}/v1/translate?steps=1 HTTP/1.1\r\nHost: {parts.hostname}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {SLOW_BODY_LENGTH}\r\nConnection: close\r\n\r\n"
    ).encode()
    selector = selectors.DefaultSelector()

    def open_one() -> None:
        try:
            sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
            sock.sendall(head + SLOW_BODY_FIRST)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, [bytearray(), time.perf_counter()])
        except OSError as err:
            outcomes.add(f"connect {type(err).__name__}")
            time.sleep(0.1)

    def finish(sock, data: bytearray, opened: float, reason: str | None) -> None:
        selector.unregister(sock)
        sock.close()
        if data.startswith(b"HTTP/") and b" " in data:
            label = data.split(b" ", 2)[1].decode(errors="replace")
        else:
            label = reason or "closed without an answer"
        outcomes.add(label, time.perf_counter() - opened)

    try:
        for _ in range(connections):
            open_one()
        while not stop.is_set():
            if len(selector.get_map()) < connections:  # failed opens: try again
                open_one()
            for key, _ in selector.select(timeout=0.2):
                sock, (data, opened) = key.fileobj, key.data
                try:
                    chunk = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError as err:
                    finish(sock, data, opened, type(err).__name__)
                    open_one()
                    continue
                data += chunk
                if not chunk or b"\r\n" in data:
                    finish(sock, data, opened, None)
                    if not stop.is_set():
                        open_one()
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()


class RssWatch:
    """Peak RSS growth of the SarTranslator replica processes (psutil, every 0.2 s) over a case."""

    def __init__(self, app_name: str):
        self.app_name = app_name
        self.pids: list[int] = []
        self.base: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        import psutil

        try:
            self.pids = [a.pid for a in translator_replicas(self.app_name) if a.pid]
        except Exception:  # noqa: BLE001 - the state API is best effort here
            self.pids = []
        for pid in self.pids:
            try:
                self.base[pid] = self.peak[pid] = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass

        def sample():
            while not stop.wait(0.2):
                for pid in list(self.base):
                    try:
                        self.peak[pid] = max(self.peak[pid], psutil.Process(pid).memory_info().rss)
                    except psutil.Error:
                        pass

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()

    def growth_mb(self) -> float | None:
        if not self.base:
            return None
        return max(self.peak[pid] - self.base[pid] for pid in self.base) / 2**20


def kill_replica(
    url: str, app_name: str, after_s: float, stop: threading.Event, outcomes: Outcomes, result: dict
) -> None:
    """After `after_s`, kill one SarTranslator replica; poll /healthz every 0.2 s until 200 (time to recovery)."""
    import ray

    if stop.wait(after_s):
        return
    try:
        replicas = translator_replicas(app_name)
    except Exception as err:  # noqa: BLE001 - said in the attack's outcome, not a silent thread death
        outcomes.add(f"replica lookup failed: {type(err).__name__}: {err}")
        return
    result["replicas_before"] = len(replicas)
    if not replicas:
        outcomes.add("no replica found to kill")
        return
    killed_at = time.perf_counter()
    try:
        ray.kill(ray.get_actor(replicas[0].name, namespace="serve"), no_restart=True)
    except Exception as err:  # noqa: BLE001 - as above
        outcomes.add(f"kill failed: {type(err).__name__}: {err}")
        return
    outcomes.add("killed")
    while time.perf_counter() - killed_at < RECOVERY_LIMIT_S:
        status = health_status(url)
        outcomes.add(f"healthz {status}")
        if status == 200:
            result["recovery_s"] = time.perf_counter() - killed_at
            return
        time.sleep(HEALTH_EVERY_S)
    result["recovery_s"] = None


# ---------------------------------------------------------------- cases


def run_case(name: str, url: str, app_name: str, seconds: float, clients: int, attack=None) -> dict:
    settle_started = time.perf_counter()
    while health_status(url) != 200 and time.perf_counter() - settle_started < SETTLE_LIMIT_S:
        time.sleep(HEALTH_EVERY_S)
    settle_s = time.perf_counter() - settle_started
    stop = threading.Event()
    outcomes = Outcomes()
    extra: dict = {}
    rss = RssWatch(app_name)
    rss.start(stop)
    legit = Legit(url, clients)
    started = time.perf_counter()
    threads = legit.run(stop)
    attacker = None
    if attack is not None:
        attacker = threading.Thread(target=attack, args=(stop, outcomes, extra), daemon=True)
        attacker.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:  # in-flight legitimate requests finish (bounded by their timeouts and retries)
        thread.join(timeout=REQUEST_TIMEOUT_S * 2 + 10)
    if attacker is not None:
        attacker.join(timeout=RECOVERY_LIMIT_S)
    row = {
        "case": name,
        "seconds": time.perf_counter() - started,
        "settle_s": settle_s,
        **legit.summary(),
        "attack": dict(outcomes.counts),
        "attack_text": outcomes.text(),
        "replica_rss_growth_mb": rss.growth_mb(),
        **extra,
    }
    if outcomes.seconds and attack is not None:
        row["attack_answer_p50_s"] = percentile(outcomes.seconds, 0.5)
    return row


def _logs_dir() -> str | None:
    try:
        import ray

        return ray._private.worker._global_node.get_logs_dir_path()  # noqa: SLF001 - where to look, best effort
    except Exception:  # noqa: BLE001
        return None


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="a bundle (default: an untrained tiny student)")
    parser.add_argument("--seconds-per-case", type=float, default=30.0)
    parser.add_argument(
        "--baseline-seconds", type=float, default=None, help="default: half of --seconds-per-case"
    )
    parser.add_argument("--clients", type=int, default=4, help="legitimate closed-loop clients")
    parser.add_argument("--slow-connections", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--serve-logs",
        action="store_true",
        help="let Serve's replicas log to this terminal (default: only to Ray's session log files)",
    )
    args = parser.parse_args()
    if not args.serve_logs:  # read by the replicas, which inherit this process's environment
        os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    seconds = args.seconds_per_case
    baseline_s = args.baseline_seconds if args.baseline_seconds is not None else max(5.0, seconds / 2)

    import ray
    from ray import serve

    from s2o_platform.ray_cluster import connect
    from s2o_platform.serving.runner import plan_serving, start_serving

    run_started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.model
        if bundle is None:
            store = StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
            bundle = write_untrained_bundles(ROOT / "configs" / "tiny", scratch, store)["student"]
        plan = plan_serving(
            DEFAULT_CONFIG, model=bundle, port=free_port(), overrides={"max_image_side": 1024}
        )
        costly, bomb_png, bomb_tiff = blank_png(1024), png_bomb(), tiff_bomb()
        print(
            f"model {bundle}; attack bodies: blank 1024 px PNG {len(costly)} B, 60000 px PNG {len(bomb_png)} B, "
            f"TIFF with a {TIFF_BLOCK} px block {len(bomb_tiff)} B",
            flush=True,
        )
        print(connect(), flush=True)
        rows = []
        try:
            url = start_serving(plan)
            print(f"serving at {url} ({time.perf_counter() - run_started:.0f} s after start)", flush=True)
            app = plan.app_name
            cases = [
                ("baseline", baseline_s, None),
                (
                    "costly 1024 px PNG",
                    seconds,
                    lambda stop, out, extra: repeat_posts(url, [("", "image/png", costly)], stop, out),
                ),
                (
                    f"slow bodies x{args.slow_connections}",
                    seconds,
                    lambda stop, out, extra: slow_bodies(url, args.slow_connections, stop, out),
                ),
                (
                    "decode bombs",
                    seconds,
                    lambda stop, out, extra: repeat_posts(
                        url, [("png ", "image/png", bomb_png), ("tiff ", "image/tiff", bomb_tiff)], stop, out
                    ),
                ),
                (
                    "replica kill",
                    seconds,
                    lambda stop, out, extra: kill_replica(url, app, seconds / 4, stop, out, extra),
                ),
            ]
            for name, case_s, attack in cases:
                row = run_case(name, url, app, case_s, args.clients, attack)
                rows.append(row)
                recovery = (
                    f", recovery {row['recovery_s']:.1f} s" if row.get("recovery_s") is not None else ""
                )
                rss = row["replica_rss_growth_mb"]
                print(
                    f"  {name}: legit {row['ok']}/{row['requests']} ok ({row['success']:.3f}), p50 {fmt_ms(row['p50_ms'])} ms, "
                    f"p99 {fmt_ms(row['p99_ms'])} ms, max {fmt_ms(row['max_ms'])} ms, failures {row['failures'] or '-'}, 503 retries {row['retries_503']}, "
                    f"conn retries {row['retries_connection']}; replica RSS +{'-' if rss is None else f'{rss:.0f}'} MB; "
                    f"attack: {row['attack_text']}{recovery} (settled {row['settle_s']:.1f} s)",
                    flush=True,
                )
        finally:
            logs = _logs_dir()
            serve.shutdown()
            ray.shutdown()

    print()
    print(
        "| case | legit requests | success | p50 ms | p99 ms | max ms | legit failures | 503 retries | replica RSS growth MB | attack outcome |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---|")
    for r in rows:
        failures = ", ".join(f"{k} x{v}" for k, v in r["failures"].items()) or "-"
        attack = r["attack_text"] if r["case"] != "baseline" else "-"
        if r.get("recovery_s") is not None:
            attack += f"; recovery {r['recovery_s']:.1f} s"
        elif "recovery_s" in r:
            attack += f"; NOT recovered within {RECOVERY_LIMIT_S:g} s"
        if r.get("attack_answer_p50_s") is not None:
            attack += f"; answered in p50 {r['attack_answer_p50_s']:.2f} s"
        rss = r["replica_rss_growth_mb"]
        print(
            f"| {r['case']} | {r['requests']} | {r['success']:.3f} | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} | {fmt_ms(r['max_ms'])} | "
            f"{failures} | {r['retries_503']} | {'-' if rss is None else f'{rss:.0f}'} | {attack} |"
        )
    total_s = time.perf_counter() - run_started
    if logs:
        print(f"\nServe's logs (tracebacks of server errors): {logs}/serve")
    print(
        f"whole run {total_s:.0f} s; success = share of legitimate requests finally answered 200 (target >= 0.99)"
    )
    min_success = min(r["success"] for r in rows) if rows else 0.0
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cases": rows,
                    "min_success": min_success,
                    "seconds_per_case": seconds,
                    "clients": args.clients,
                    "total_s": total_s,
                },
                indent=2,
                default=str,
            )
        )
    print(f"min_success={min_success:.3f}")


if __name__ == "__main__":
    main()
