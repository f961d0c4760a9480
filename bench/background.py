#!/usr/bin/env python3
"""Benchmark of the background features: the streamed article export, the
notification watch streams across replicas, and the job queue.

1. Export: seeds N articles straight into PostgreSQL (SQL, not the API, so
   that 100,000 articles take seconds), then compares streaming
   GET /api/articles:export with `COPY ... TO STDOUT` of the same rows, and
   samples the server's RSS every 50 ms while it streams.
2. Notification latency: replicas A and B on one database; S users watch
   their notifications on B (one SSE stream each) while an actor comments
   on their articles through A; latency is the event's arrival on B minus
   the arrival of the comment's HTTP answer from A.
3. Job throughput: J canary jobs drained by `conduit worker` (8 and 16
   workers), then a steady enqueue of batches of 100 with a worker running.

Prints numbers and PASS/MISS against targets; asserts nothing. Needs a
release build (it does not build) and PostgreSQL on 127.0.0.1:5432 (trust).
Loopback only; every loop is bounded in count and time; every process it
starts is stopped on exit.

Usage: python3 bench/background.py [--articles 100000] [--streams 1000] [--jobs 20000]
Environment: CONDUIT_BIN (default target/release/conduit), PGURL.
"""

import argparse
import asyncio
import atexit
import http.client
import json
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.abspath(os.environ.get("CONDUIT_BIN", os.path.join(ROOT, "target/release/conduit")))
PG = os.environ.get("PGURL", "postgres://postgres@127.0.0.1:5432")
DB = "conduit_bench_background"
SECRET = "bench-background-secret-bench-background"
PASSWORD = "bench-password"
MB = 1024 * 1024

CHILDREN = []
LOG_DIR = tempfile.mkdtemp(prefix="conduit-bench-background-")
SUMMARY = []  # (part, metric, value, target, ratio, verdict)


# ---------------------------------------------------------------- helpers

def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load():
    """The 1-minute load average: anything else busy on the machine (a
    build) takes cores from the measured processes and shows here."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(sql, db=DB, timeout=600, stdin=None):
    """Runs SQL with psql (stops at the first error) and returns its output."""
    args = ["psql", f"{PG}/{db}", "-v", "ON_ERROR_STOP=1", "-Atq"]
    args += ["-f", "-"] if stdin is not None else ["-c", sql]
    result = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"psql failed: {result.stderr.strip()[:500]}")
    return result.stdout


class Pg:
    """A minimal PostgreSQL client (simple query protocol, trust auth only):
    polling every 100 ms through one connection instead of spawning psql
    each time keeps the measuring cheap on a small machine."""

    def __init__(self, db=DB):
        url = urllib.parse.urlsplit(PG)
        self.sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 5432), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in
                          (("user", url.username or "postgres"), ("database", db))) + b"\0"
        self.sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        self._results()

    def _message(self):
        header = self.file.read(5)
        if len(header) < 5:
            raise ConnectionError("PostgreSQL closed the connection")
        kind, length = header[:1], struct.unpack("!i", header[1:])[0]
        return kind, self.file.read(length - 4)

    def _results(self):
        rows, error = [], None
        while True:
            kind, body = self._message()
            if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                raise RuntimeError("PostgreSQL asks for a password; this client only does trust auth")
            if kind == b"E":
                fields = dict((f[:1], f[1:].decode(errors="replace")) for f in body.split(b"\0") if f)
                error = fields.get(b"M", "error")
            elif kind == b"D":
                count, offset, row = struct.unpack("!h", body[:2])[0], 2, []
                for _ in range(count):
                    size = struct.unpack("!i", body[offset:offset + 4])[0]
                    offset += 4
                    row.append(None if size < 0 else body[offset:offset + size].decode())
                    offset += max(size, 0)
                rows.append(row)
            elif kind == b"Z":
                if error:
                    raise RuntimeError(f"PostgreSQL: {error}")
                return rows

    def query(self, sql):
        data = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!i", len(data) + 4) + data)
        return self._results()

    def scalar(self, sql):
        return self.query(sql)[0][0]

    def close(self):
        try:
            self.sock.sendall(b"X\0\0\0\4")
        except OSError:
            pass
        self.sock.close()


def stop_process(process, timeout=20):
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode


def cleanup():
    for process in CHILDREN:
        try:
            stop_process(process, timeout=10)
        except Exception:  # keep stopping the others
            pass


atexit.register(cleanup)


def base_env(port, admin, **extra):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": f"{PG}/{DB}",
        "JWT_SECRET": SECRET,
        "CONDUIT_LISTEN": f"127.0.0.1:{port}",
        "CONDUIT_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "MIGRATE_ON_START": "false",
        # The benchmark is its own only client: no limit may shape it.
        "RATE_LIMIT": "100000000/min",
        "RATE_LIMIT_CREDENTIALS": "100000000/min",
        "DRAIN_DELAY": "0s",
        "DRAIN_TIMEOUT": "10s",
        "LOG_LEVEL": "warn",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Process:
    """A conduit process (`serve` or `worker`) with its own ports and log."""

    def __init__(self, name, command="serve", **env):
        self.name, self.command = name, command
        self.port, self.admin = free_port(), free_port()
        self.env = base_env(self.port, self.admin, **env)
        self.log_path = os.path.join(LOG_DIR, f"{name}.log")
        self.process = None

    def start(self, wait_ready=True):
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen([BINARY, self.command], env=self.env, stdout=log_file,
                                            stderr=subprocess.STDOUT)
        CHILDREN.append(self.process)
        if wait_ready:
            deadline = time.time() + 60
            while not self.ready():
                if self.process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{self.name} did not become ready; log:\n{self.log_tail()}")
                time.sleep(0.1)
        return self

    def ready(self):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=1)
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def stop(self):
        return stop_process(self.process) if self.process else None

    def rss_mb(self):
        return read_status(self.process.pid, "VmRSS")

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def read_status(pid, field):
    """A /proc/<pid>/status memory field in MB (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


_local = threading.local()


def api(port, method, path, body=None, token=None, expect=(200, 201), timeout=60):
    """One JSON call on this thread's keep-alive connection to `port`."""
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = "Token " + token
    data = json.dumps(body).encode() if body is not None else None
    for attempt in (1, 2):
        conn = conns.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conns[port] = conn
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            break
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # A keep-alive connection the server closed meanwhile: one fresh try.
            conn.close()
            conns.pop(port, None)
            if attempt == 2:
                raise
    if response.status not in expect:
        raise RuntimeError(f"{method} {path} -> {response.status}: {raw[:300]!r}")
    return json.loads(raw) if raw else None


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_values) // 1)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def verdict(value, target, higher_is_better):
    if value is None or target is None or value != value:
        return "n/a", "MISS" if target is not None else ""
    ratio = value / target if target else float("inf")
    ok = ratio >= 1 if higher_is_better else ratio < 1
    return f"{ratio:.2f}", "PASS" if ok else "MISS"


def summarize(part, metric, value, unit="", target=None, higher_is_better=True, fmt="{:.1f}"):
    shown = "n/a" if value is None or value != value else fmt.format(value) + (f" {unit}" if unit else "")
    if target is None:
        SUMMARY.append((part, metric, shown, "", "", ""))
        return
    ratio, result = verdict(value, target, higher_is_better)
    target_text = ("≥ " if higher_is_better else "< ") + fmt.format(target) + (f" {unit}" if unit else "")
    SUMMARY.append((part, metric, shown, target_text, ratio, result))


def check(part, metric, ok, detail):
    """A yes/no row of the summary (no ratio: there is nothing to divide)."""
    SUMMARY.append((part, metric, detail, "all correct", "", "PASS" if ok else "MISS"))


# ---------------------------------------------------------------- part 1: export

WORDS = ("the a of and to in is that for it as with was on be by this are from at or an have not they which "
         "one you had her all their there can more would will each about how up out them then she many some "
         "these would other into has two could time than first been water who its now people my made over "
         "did down only way find use may long little very after word called just where most know").split()


def paragraph(rng):
    """A 1-2 KB body of sentences, like the ones the API seeding writes."""
    target, sentences = rng.randint(1024, 2000), []
    length = 0
    while length < target:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16)))
        sentence = sentence[0].upper() + sentence[1:] + "."
        sentences.append(sentence)
        length += len(sentence) + 1
    return " ".join(sentences)[:target].rstrip() + "."


def seed_articles(count):
    """Authors, 50 tags, `count` articles with 1-4 tags each, some favorites.
    The counter triggers are off during the bulk insert (every article row
    would update the single article_totals row, which is quadratic in one
    transaction); the counters are then computed once, exactly."""
    rng = random.Random(7)
    pool = 1000  # distinct bodies; each article also starts with its own number
    values = ",\n".join(f"({i}, '{paragraph(rng)}')" for i in range(pool))
    script = f"""
SET session_replication_role = replica;
CREATE TEMP TABLE bench_paragraphs (id int PRIMARY KEY, body text NOT NULL);
INSERT INTO bench_paragraphs VALUES
{values};
INSERT INTO users (username, email, password_hash, bio)
SELECT 'author' || g, 'author' || g || '@bench.test', 'not-a-password-hash',
       CASE WHEN g % 3 = 0 THEN 'Author number ' || g || ' writes about many things.' END
FROM generate_series(1, 1000) g ORDER BY g;
INSERT INTO tags (name) SELECT 'tag' || g FROM generate_series(0, 49) g;
INSERT INTO articles (slug, title, description, body, tag_list, author_id, created_at, updated_at)
SELECT 'bench-article-' || g || '-' || substr(md5(g::text), 1, 6),
       'Benchmark article number ' || g,
       'What article ' || g || ' of the benchmark is about',
       'Article ' || g || '. ' || p.body,
       ARRAY(SELECT 'tag' || ((g * 7 + k * 13) % 50) FROM generate_series(1, 1 + g % 4) k),
       u.first + g % 1000,
       now() - make_interval(secs => {count} - g),
       now() - make_interval(secs => {count} - g)
FROM generate_series(1, {count}) g
JOIN bench_paragraphs p ON p.id = g % {pool}
CROSS JOIN (SELECT min(id) AS first FROM users) u;
INSERT INTO article_tags (tag_id, article_id, created_at)
SELECT t.id, a.id, a.created_at FROM articles a CROSS JOIN LATERAL unnest(a.tag_list) AS tag (tag_name)
JOIN tags t ON t.name = tag.tag_name;
INSERT INTO favorites (user_id, article_id, article_created_at)
SELECT u.first + (a.id * 31 + k * 97) % 1000, a.id, a.created_at
FROM articles a CROSS JOIN generate_series(1, 3) k CROSS JOIN (SELECT min(id) AS first FROM users) u
WHERE a.id % 5 = 0 AND k <= 1 + a.id % 3;
RESET session_replication_role;
UPDATE articles a SET favorites_count = f.n FROM (SELECT article_id, count(*) AS n FROM favorites GROUP BY 1) f
WHERE f.article_id = a.id;
UPDATE users u SET articles_count = x.n FROM (SELECT author_id, count(*) AS n FROM articles GROUP BY 1) x WHERE x.author_id = u.id;
UPDATE users u SET favorites_count = x.n FROM (SELECT user_id, count(*) AS n FROM favorites GROUP BY 1) x WHERE x.user_id = u.id;
UPDATE tags t SET article_count = x.n FROM (SELECT tag_id, count(*) AS n FROM article_tags GROUP BY 1) x WHERE x.tag_id = t.id;
UPDATE article_totals SET count = (SELECT count(*) FROM articles);
"""
    psql(None, stdin=script, timeout=1200)
    psql("VACUUM ANALYZE", timeout=600)
    psql("CHECKPOINT", timeout=600)


COPY_SQL = ("COPY (SELECT a.slug, a.title, a.description, a.body, a.tag_list, a.created_at, a.updated_at, "
            "a.favorites_count, u.username, u.bio, u.image FROM articles a JOIN users u ON u.id = a.author_id "
            "ORDER BY a.created_at DESC, a.id DESC) TO STDOUT")


def time_copy():
    """psql COPY of the export's rows to a pipe that is only counted."""
    started = time.perf_counter()
    process = subprocess.Popen(["psql", f"{PG}/{DB}", "-Atqc", COPY_SQL], stdout=subprocess.PIPE)
    CHILDREN.append(process)
    size = rows = 0
    while True:
        block = process.stdout.read(MB)
        if not block:
            break
        size += len(block)
        rows += block.count(b"\n")  # COPY escapes newlines inside values
    if process.wait(timeout=60) != 0:
        raise RuntimeError("psql COPY failed")
    return rows, size, time.perf_counter() - started


def time_export(server, expected_rows, newest_slug, deadline_s=900):
    """Streams the export, counting lines, while a thread samples VmRSS."""
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            rss = server.rss_mb()
            if rss is not None:
                samples.append(rss)
            time.sleep(0.05)

    rss_before = server.rss_mb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    size = rows = 0
    first, tail = b"", b""
    try:
        conn.request("GET", "/api/articles:export")
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"export answered {response.status}: {response.read(300)!r}")
        content_type = response.getheader("content-type")
        while True:
            block = response.read(256 * 1024)
            if not block:
                break
            size += len(block)
            rows += block.count(b"\n")
            if len(first) < 1 << 16:
                first += block[: 1 << 16]
            tail = (tail + block)[-(1 << 16):]
            if time.perf_counter() - started > deadline_s:
                raise RuntimeError(f"export still running after {deadline_s} s")
    finally:
        elapsed = time.perf_counter() - started
        conn.close()
        stop.set()
        sampler.join()
    # The stream must be whole: complete lines, the newest article first,
    # an article (not an {"error": ...} object) last, every row there.
    problems = []
    if content_type != "application/x-ndjson":
        problems.append(f"content-type {content_type!r}")
    if not tail.endswith(b"\n"):
        problems.append("the last line is cut")
    lines = [line for line in tail.split(b"\n") if line]
    last = json.loads(lines[-1]) if lines else {}
    if "error" in last or "slug" not in last:
        problems.append(f"last line is not an article: {lines[-1][:200]!r}" if lines else "no line")
    head = json.loads(first.split(b"\n", 1)[0]) if b"\n" in first else {}
    missing = {"slug", "title", "description", "body", "tagList", "createdAt", "updatedAt", "favorited",
               "favoritesCount", "author"} - set(head)
    if missing:
        problems.append(f"first article lacks {sorted(missing)}")
    if head.get("slug") != newest_slug:
        problems.append(f"first article is {head.get('slug')!r}, the newest is {newest_slug!r}")
    if rows != expected_rows:
        problems.append(f"{rows} lines for {expected_rows} articles")
    peak = max(samples) if samples else None
    return {"rows": rows, "bytes": size, "seconds": elapsed, "rss_before": rss_before, "rss_peak": peak,
            "rss_growth": (peak - rss_before) if peak is not None and rss_before is not None else None,
            "samples": len(samples), "problems": problems}


def part_export(articles):
    log(f"part 1: seeding {articles} articles by SQL ({load()})")
    started = time.time()
    seed_articles(articles)
    stats = psql("SELECT count(*), round(avg(length(body))), (SELECT count(*) FROM article_tags), "
                 "(SELECT count(*) FROM favorites), pg_size_pretty(pg_total_relation_size('articles')) "
                 "FROM articles").strip().split("|")
    log(f"seeded in {time.time() - started:.1f} s: {stats[0]} articles (average body {stats[1]} bytes), "
        f"{stats[2]} article tags, {stats[3]} favorites, articles table {stats[4]}")
    newest = psql("SELECT slug FROM articles ORDER BY created_at DESC, id DESC LIMIT 1").strip()

    copies = [time_copy() for _ in range(2)]
    for run, (rows, size, seconds) in zip(("cold", "warm"), copies):
        log(f"COPY ({run}): {rows} rows, {size / MB:.1f} MB in {seconds:.2f} s: "
            f"{rows / seconds:,.0f} rows/s, {size / MB / seconds:.1f} MB/s")
    copy_rows, copy_size, copy_s = copies[1]
    copy_rate = copy_rows / copy_s

    server = Process("export", JOB_WORKERS=0).start()
    try:
        # A few small calls first so that the RSS before the export is the
        # server's settled size, not its start-up size.
        for _ in range(3):
            api(server.port, "GET", "/api/articles?limit=1")
        time.sleep(0.5)
        runs = []
        for run in ("first", "second (warm)"):
            result = time_export(server, articles, newest)
            runs.append(result)
            rate = result["rows"] / result["seconds"]
            log(f"export {run}: {result['rows']} rows, {result['bytes'] / MB:.1f} MB in {result['seconds']:.2f} s: "
                f"{rate:,.0f} rows/s, {result['bytes'] / MB / result['seconds']:.1f} MB/s; "
                f"RSS before {result['rss_before']:.1f} MB, peak {result['rss_peak']:.1f} MB, "
                f"growth {result['rss_growth']:.1f} MB ({result['samples']} samples); "
                f"export/COPY rows/s {rate / copy_rate:.2f}; {load()}")
            for problem in result["problems"]:
                log(f"  PROBLEM: {problem}")
    finally:
        server.stop()

    summarize("export", f"COPY via psql (warm), {copy_rows} rows", copy_rate, "rows/s", fmt="{:,.0f}")
    summarize("export", "COPY via psql (warm)", copy_size / MB / copy_s, "MB/s")
    for name, result in zip(("first", "warm"), runs):
        rate = result["rows"] / result["seconds"]
        summarize("export", f"export {name}", rate, "rows/s", fmt="{:,.0f}")
        summarize("export", f"export {name}", result["bytes"] / MB / result["seconds"], "MB/s")
        summarize("export", f"export {name} / COPY rows/s", rate / copy_rate, "", target=0.5, fmt="{:.2f}")
        summarize("export", f"export {name}: RSS growth (peak {result['rss_peak']:.0f} MB)", result["rss_growth"],
                  "MB", target=20, higher_is_better=False)
        check("export", f"export {name}: every article, newest first, whole lines", not result["problems"],
              "; ".join(result["problems"]) or f"{result['rows']} lines")


# ---------------------------------------------------------------- part 2: notification latency

class Watcher:
    """One user's SSE stream and everything it received."""

    def __init__(self, name, token):
        self.name, self.token = name, token
        self.last = 0
        self.ids = []  # every notification id received, in order
        self.arrivals = {}  # comment id -> arrival time (perf_counter)
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.keep_alives = 0
        self.errors = []


async def watch(watcher, port, stop, deadline):
    """Keeps the stream open until `stop`; on an end or error, reconnects
    and resumes after the last id received (Last-Event-ID)."""
    first = True
    while not stop.is_set() and time.perf_counter() < deadline:
        if not first:
            watcher.reconnects += 1
            await asyncio.sleep(0.2)
        first = False
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            # The first connect asks for everything after 0, so that nothing
            # made before the subscription took effect can be missed.
            path = "/api/notifications:watch" + ("?after=0" if watcher.last == 0 else "")
            request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {watcher.token}\r\n"
                       "Accept: text/event-stream\r\n")
            if watcher.last:
                request += f"Last-Event-ID: {watcher.last}\r\n"
            writer.write((request + "\r\n").encode())
            status_line = await reader.readline()
            headers = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
            if status != 200:
                watcher.errors.append(f"status {status}")
                continue
            watcher.connected.set()
            chunked = "chunked" in headers.get("transfer-encoding", "")
            buffer = b""
            while not stop.is_set():
                if chunked:
                    size_line = await reader.readline()
                    if not size_line:
                        break
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        break
                    data = (await reader.readexactly(size + 2))[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        break
                arrived = time.perf_counter()
                buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    handle_event(watcher, event, arrived)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            watcher.errors.append(f"{type(e).__name__}: {e}")
        finally:
            if writer is not None:
                writer.close()


def handle_event(watcher, event, arrived):
    fields = {}
    for line in event.decode().split("\n"):
        key, _, value = line.partition(":")
        fields[key] = value[1:] if value.startswith(" ") else value
    if fields.get("event") == "error":
        watcher.errors.append(f"error event {fields.get('data', '')[:200]}")
        return
    data = json.loads(fields.get("data") or "null") or {}
    if data.get("notification") is None:
        watcher.keep_alives += 1
        return
    number = int(data["id"])
    if fields.get("id") != data["id"]:
        watcher.errors.append(f"SSE id {fields.get('id')!r} for notification {data['id']}")
    watcher.ids.append(number)
    watcher.last = max(watcher.last, number)
    comment = data["notification"].get("commentId")
    if comment is not None:
        watcher.arrivals[int(comment)] = arrived


def register(port, name):
    body = api(port, "POST", "/api/users", {"user": {"username": name, "email": f"{name}@bench.test",
                                                     "password": PASSWORD}})
    return body["user"]["token"]


def part_latency(streams, writes, rate):
    log(f"part 2: two replicas, {streams} watch streams on B, {writes} comments through A at {rate}/s ({load()})")
    a = Process("replica-a").start()
    b = Process("replica-b").start()
    ports = (a.port, b.port)
    try:
        # Registration hashes each password (argon2): spread it on both
        # replicas, 8 at a time, bounded in time.
        started = time.time()
        actor_token = register(a.port, "actor")
        names = [f"watcher{i}" for i in range(streams)]
        tokens = {}
        deadline = time.time() + 600

        failures = []

        def enroll(i):
            if time.time() > deadline or len(failures) > 20:
                return
            try:
                token = register(ports[i % 2], names[i])
                slug = api(ports[i % 2], "POST", "/api/articles", {"article": {
                    "title": f"Article of {names[i]}", "description": "watched", "body": "A body.",
                    "tagList": ["watched"]}}, token=token)["article"]["slug"]
                tokens[names[i]] = (token, slug)
            except Exception as e:  # reported below; the others go on
                failures.append(str(e)[:200])

        pool = ThreadPoolExecutor(8)
        try:
            list(pool.map(enroll, range(streams)))
        finally:
            # On an interruption, what has not started yet is dropped.
            pool.shutdown(wait=True, cancel_futures=True)
        log(f"registered {len(tokens)} watchers (and wrote an article each) in {time.time() - started:.1f} s")
        for failure in failures[:3]:
            log(f"  PROBLEM: registration failed: {failure}")
        if len(tokens) < streams:
            log(f"  only {len(tokens)} of {streams} within the time bound; continuing with those")
        stats = asyncio.run(measure_latency(a, b, tokens, actor_token, writes, rate))
        pg = Pg()
        db_counts = {row[0]: (int(row[1]), int(row[2])) for row in pg.query(
            "SELECT u.username, max(n.seq), count(*) FROM notifications n JOIN users u ON u.id = n.recipient_id "
            "GROUP BY u.username")}
        pg.close()
    finally:
        a_code, b_code = a.stop(), b.stop()
    report_latency(stats, db_counts, len(tokens))
    if a_code != 0 or b_code != 0:
        log(f"  PROBLEM: replicas exited {a_code} and {b_code} on SIGTERM")
    check("latency", "replicas exit 0 on SIGTERM", a_code == 0 and b_code == 0, f"A {a_code}, B {b_code}")


async def measure_latency(a, b, tokens, actor_token, writes, rate):
    watchers = [Watcher(name, token) for name, (token, _) in tokens.items()]
    stop = asyncio.Event()
    deadline = time.perf_counter() + 300
    tasks = []
    opened = time.perf_counter()
    # Opened 50 at a time: a burst of connects is not what is measured.
    for i in range(0, len(watchers), 50):
        for w in watchers[i:i + 50]:
            tasks.append(asyncio.create_task(watch(w, b.port, stop, deadline)))
        await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(asyncio.gather(*(w.connected.wait() for w in watchers)), timeout=120)
    except asyncio.TimeoutError:
        pass
    connected = sum(w.connected.is_set() for w in watchers)
    log(f"{connected} of {len(watchers)} streams open on B in {time.perf_counter() - opened:.1f} s; "
        f"B's RSS {b.rss_mb():.1f} MB")
    await asyncio.sleep(1)

    # The writes run on a thread (blocking http.client); the event loop
    # keeps reading the streams meanwhile.
    rng = random.Random(11)
    done = []  # (watcher name, comment id, sent, answered)
    failures = []
    slugs = {name: slug for name, (_, slug) in tokens.items()}

    def write():
        began = time.perf_counter()
        for i in range(writes):
            pause = began + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            name = rng.choice(watchers).name
            sent = time.perf_counter()
            try:
                body = api(a.port, "POST", f"/api/articles/{slugs[name]}/comments",
                           {"comment": {"body": f"comment {i}"}}, token=actor_token)
                done.append((name, body["comment"]["id"], sent, time.perf_counter()))
            except Exception as e:  # report, keep the pace
                failures.append(str(e)[:200])

    writes_started = time.perf_counter()
    await asyncio.to_thread(write)
    writes_s = time.perf_counter() - writes_started
    by_name = {w.name: w for w in watchers}
    settle = time.perf_counter() + 10
    while time.perf_counter() < settle and any(c not in by_name[n].arrivals for n, c, _, _ in done):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # late duplicates, if any, would arrive now
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"watchers": watchers, "done": done, "failures": failures, "connected": connected,
            "writes_s": writes_s, "b_rss": b.rss_mb()}


def report_latency(stats, db_counts, registered):
    watchers, done = stats["watchers"], stats["done"]
    by_name = {w.name: w for w in watchers}
    from_answer, from_send, missing = [], [], []
    for name, comment, sent, answered in done:
        arrived = by_name[name].arrivals.get(comment)
        if arrived is None:
            missing.append((name, comment))
        else:
            from_answer.append(arrived - answered)
            from_send.append(arrived - sent)
    from_answer.sort()
    from_send.sort()
    duplicates = sum(len(w.ids) - len(set(w.ids)) for w in watchers)
    # Each stream must hold exactly 1..n, n being what the database holds.
    wrong = [w.name for w in watchers if w.ids != list(range(1, db_counts.get(w.name, (0, 0))[0] + 1))]
    reconnects = sum(w.reconnects for w in watchers)
    errors = [e for w in watchers for e in w.errors]
    keep_alives = sum(w.keep_alives for w in watchers)
    log(f"{len(done)} comments answered in {stats['writes_s']:.1f} s ({len(stats['failures'])} failed); "
        f"{len(from_answer)} delivered, {len(missing)} missing; {duplicates} duplicates; "
        f"{len(wrong)} streams differ from the database; {reconnects} reconnects; {keep_alives} keep-alives; "
        f"B's RSS {stats['b_rss']:.1f} MB; {load()}")
    # "From A's answer" can come out slightly negative: the event loop may
    # read the event before the writing thread gets to read its answer.
    for label, values in (("from A's answer", from_answer), ("from the request's send", from_send)):
        if values:
            log(f"latency {label}: p50 {percentile(values, .5) * 1000:.1f} ms, p95 {percentile(values, .95) * 1000:.1f} ms, "
                f"p99 {percentile(values, .99) * 1000:.1f} ms, max {values[-1] * 1000:.1f} ms, "
                f"min {values[0] * 1000:.1f} ms")
    for failure in stats["failures"][:5]:
        log(f"  PROBLEM: write failed: {failure}")
    for name, comment in missing[:5]:
        log(f"  PROBLEM: comment {comment} on {name}'s article never arrived on the stream")
    for name in wrong[:5]:
        w = by_name[name]
        log(f"  PROBLEM: {name} received {w.ids[:20]} but the database holds 1..{db_counts.get(name, (0, 0))[0]}")
    for error in sorted(set(errors))[:5]:
        log(f"  stream error: {error} ({errors.count(error)}x)")

    n = len(watchers)
    summarize("latency", f"streams open on B (of {registered} registered)", stats["connected"], "", target=n,
              fmt="{:.0f}")
    for q, label in ((.5, "p50"), (.95, "p95")):
        summarize("latency", f"{label} from A's answer", percentile(from_answer, q) * 1000, "ms", fmt="{:.1f}")
    summarize("latency", f"p99 from A's answer, {n} streams", percentile(from_answer, .99) * 1000, "ms",
              target=1000, higher_is_better=False)
    summarize("latency", "max from A's answer", from_answer[-1] * 1000 if from_answer else None, "ms")
    summarize("latency", "p99 from the request's send", percentile(from_send, .99) * 1000, "ms")
    summarize("latency", f"delivered of {len(done)} answered writes", len(from_answer), "", target=len(done),
              fmt="{:.0f}")
    check("latency", "each stream holds exactly 1..n of the database", not wrong and not duplicates,
          f"{duplicates} duplicates, {len(wrong)} streams differ")
    check("latency", "writes answered 2xx", not stats["failures"], f"{len(done)} ok, {len(stats['failures'])} failed")
    summarize("latency", "reconnects", reconnects, "", fmt="{:.0f}")


# ---------------------------------------------------------------- part 3: job throughput

def wait_drained(pg, total, timeout, samples=None):
    """Polls the canary count every 100 ms; returns (first progress, drained)
    times and appends (time, jobs left) to `samples` when given."""
    started = time.perf_counter()
    first = None
    while time.perf_counter() - started < timeout:
        left = int(pg.scalar("SELECT count(*) FROM jobs WHERE kind = 'canary'"))
        now = time.perf_counter()
        if samples is not None:
            samples.append((now, left))
        if first is None and left < total:
            first = now
        if left == 0:
            return first, now
        time.sleep(0.1)
    return first, None


def quarter_rates(samples, total):
    """Jobs/s in each quarter of the drain: a rate that falls as the run
    goes on points at the queue's cost growing with what it has done."""
    rates, marks = [], [total * (1 - q / 4) for q in range(5)]
    times = []
    for mark in marks:
        hit = next((t for t, left in samples if left <= mark), None)
        times.append(hit)
    for a, b in zip(times, times[1:]):
        rates.append(total / 4 / (b - a) if a is not None and b is not None and b > a else float("inf"))
    return rates


def drain(pg, jobs, workers):
    started = time.perf_counter()
    out = subprocess.run([BINARY, "jobs", "canary", "--count", str(jobs)], env=base_env(free_port(), free_port()),
                         capture_output=True, text=True, timeout=300)
    enqueue_s = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"jobs canary failed: {out.stderr.strip()[:300]}")
    queued = int(pg.scalar("SELECT count(*) FROM jobs WHERE kind = 'canary' AND state = 'queued'"))
    log(f"enqueued {queued} canary jobs in {enqueue_s:.2f} s (conduit jobs canary --count {jobs})")
    worker = Process(f"worker-{workers}", command="worker", JOB_WORKERS=workers, DB_MAX_CONNECTIONS=workers + 8)
    spawned = time.perf_counter()
    worker.start(wait_ready=False)
    try:
        samples = []
        first, drained = wait_drained(pg, queued, timeout=min(600, 60 + jobs / 200), samples=samples)
    finally:
        code = worker.stop()
    dead = int(pg.scalar("SELECT count(*) FROM jobs WHERE kind = 'canary' AND state = 'dead'"))
    if drained is None:
        left = pg.scalar("SELECT count(*) FROM jobs WHERE kind = 'canary'")
        log(f"  PROBLEM: {left} canary jobs still there after the time bound; worker log:\n{worker.log_tail()}")
        rate = None
    else:
        rate = queued / (drained - spawned)
        since_first = queued / (drained - first) if drained > first else float("inf")
        log(f"{workers} workers: {queued} jobs done in {drained - spawned:.2f} s from the worker's start "
            f"({since_first:,.0f} jobs/s from its first completion): {rate:,.0f} jobs/s; "
            f"{dead} dead; worker exit code {code}; {load()}")
        log("  by quarter of the queue: " + ", ".join(f"{r:,.0f}" for r in quarter_rates(samples, queued)) + " jobs/s")
    pg.query("DELETE FROM jobs WHERE kind = 'canary'")
    return rate, dead, code


def steady(pg, seconds, offered):
    """A worker already running; batches of 100 enqueued, each its own
    transaction, at `offered` jobs/s (0: as fast as one connection can) for
    `seconds`: how fast jobs complete while others are being enqueued, and
    how far behind the workers fall."""
    worker = Process("worker-steady", command="worker", JOB_WORKERS=8, DB_MAX_CONNECTIONS=16)
    worker.start()  # ready: connected, listening for new jobs
    enqueue = Pg()
    try:
        per_second = offered / 100 if offered else None
        began = time.perf_counter()
        enqueued, backlog_max, i = 0, 0, 0
        next_poll = began
        # Bounded by time and by count (100,000 jobs).
        while time.perf_counter() - began < seconds and enqueued < 100_000:
            if per_second:
                pause = began + i / per_second - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            enqueue.query("INSERT INTO jobs (kind) SELECT 'canary' FROM generate_series(1, 100)")
            enqueued += 100
            i += 1
            if time.perf_counter() >= next_poll:
                backlog_max = max(backlog_max, int(pg.scalar("SELECT count(*) FROM jobs WHERE kind = 'canary'")))
                next_poll += 0.1
        stopped = time.perf_counter()
        backlog_end = int(pg.scalar("SELECT count(*) FROM jobs WHERE kind = 'canary'"))
        _, drained = wait_drained(pg, backlog_end, timeout=min(600, 30 + backlog_end / 200))
    finally:
        enqueue.close()
        code = worker.stop()
    dead = int(pg.scalar("SELECT count(*) FROM jobs WHERE kind = 'canary' AND state = 'dead'"))
    pg.query("DELETE FROM jobs WHERE kind = 'canary'")
    window = stopped - began
    result = {"enqueued": enqueued, "offered": enqueued / window, "during": (enqueued - backlog_end) / window,
              "backlog_max": max(backlog_max, backlog_end), "backlog_end": backlog_end, "dead": dead, "code": code,
              "overall": None, "lag": None}
    if drained is None:
        log(f"  PROBLEM: steady jobs not drained in time; worker log:\n{worker.log_tail()}")
    else:
        result["overall"], result["lag"] = enqueued / (drained - began), drained - stopped
    log(f"steady, 8 workers: {enqueued} jobs enqueued in batches of 100 over {window:.1f} s "
        f"({result['offered']:,.0f} jobs/s offered); {result['during']:,.0f} jobs/s completed meanwhile; "
        f"backlog max {result['backlog_max']}, {backlog_end} at the last batch, all done "
        f"{result['lag'] if result['lag'] is None else round(result['lag'], 2)} s later "
        f"({result['overall'] or 0:,.0f} jobs/s overall); {dead} dead; worker exit code {code}; {load()}")
    return result


def part_jobs(jobs, offered):
    log(f"part 3: job throughput, {jobs} canary jobs, no server running ({load()})")
    pg = Pg()
    try:
        leftover = pg.query("SELECT kind, state, count(*) FROM jobs GROUP BY 1, 2")
        if leftover:
            log(f"  jobs left from part 2 (should be none): {leftover}")
        for workers in (8, 16):
            rate, dead, code = drain(pg, jobs, workers)
            summarize("jobs", f"drain {jobs} canaries, JOB_WORKERS={workers}", rate, "jobs/s", target=2000,
                      fmt="{:,.0f}")
            check("jobs", f"no dead job, worker exits 0 (JOB_WORKERS={workers})", not dead and code == 0,
                  f"{dead} dead, exit {code}")
        r = steady(pg, 5, offered)
        label = f"{offered:,} jobs/s" if offered else "as fast as possible"
        summarize("jobs", f"steady: offered in batches of 100 ({label})", r["offered"], "jobs/s", fmt="{:,.0f}")
        summarize("jobs", "steady: completed while enqueuing, JOB_WORKERS=8", r["during"], "jobs/s", target=2000,
                  fmt="{:,.0f}")
        summarize("jobs", "steady: completed overall (until drained)", r["overall"], "jobs/s", fmt="{:,.0f}")
        summarize("jobs", f"steady: backlog max ({r['backlog_end']} at the last batch)", r["backlog_max"], "jobs",
                  fmt="{:.0f}")
        summarize("jobs", "steady: drained after the last batch", r["lag"], "s", fmt="{:.2f}")
        check("jobs", "steady: no dead job, worker exits 0", not r["dead"] and r["code"] == 0,
              f"{r['dead']} dead, exit {r['code']}")
    finally:
        pg.close()


# ---------------------------------------------------------------- main

def print_summary():
    print(f"\n{load()} at the end; results shift when other work shares the cores")
    print("\n| part | metric | value | target | ratio | result |")
    print("|---|---|---|---|---|---|")
    for row in SUMMARY:
        print("| " + " | ".join(str(c) for c in row) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--writes", type=int, default=200, help="comments made in part 2")
    parser.add_argument("--rate", type=float, default=20, help="comments per second in part 2")
    parser.add_argument("--steady-rate", type=int, default=5000,
                        help="jobs/s offered in part 3's steady scenario (0: as fast as possible)")
    parser.add_argument("--parts", default="export,latency,jobs")
    parser.add_argument("--timeout", type=int, default=3600, help="bound on the whole run, seconds")
    args = parser.parse_args()

    if not os.access(BINARY, os.X_OK):
        sys.exit(f"{BINARY} is missing: build it first (cargo build --release) or set CONDUIT_BIN")
    # SIGTERM and the overall bound both end in SystemExit, so that the
    # finally blocks and atexit stop every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(f"stopped after the {args.timeout} s bound"))
    signal.alarm(args.timeout)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 65536):  # a socket per stream, here and in the server (which inherits it)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    parts = set(args.parts.split(","))
    log(f"binary {BINARY}; database {DB}; {os.cpu_count()} cores shared by this script, conduit and PostgreSQL")
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", db="postgres")
    psql(f"CREATE DATABASE {DB}", db="postgres")
    migrate = subprocess.run([BINARY, "migrate"], env=base_env(free_port(), free_port()), capture_output=True,
                             text=True, timeout=120)
    if migrate.returncode != 0:
        sys.exit(f"migrate failed: {migrate.stderr.strip()[:500]}")
    failed = False
    try:
        if "export" in parts:
            part_export(args.articles)
        if "latency" in parts:
            part_latency(args.streams, args.writes, args.rate)
        if "jobs" in parts:
            part_jobs(args.jobs, args.steady_rate)
    except BaseException:
        failed = True
        log(f"server logs kept in {LOG_DIR}")
        raise
    finally:
        cleanup()
        print_summary()
        if not failed:
            # Kept after a failure, for a look at what went wrong.
            shutil.rmtree(LOG_DIR, ignore_errors=True)
            psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", db="postgres")


if __name__ == "__main__":
    main()
