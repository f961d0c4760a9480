"""A multi-replica rehearsal on loopback: three conduit processes sharing
one PostgreSQL database and one Redis, behind nginx (HTTP/1.1, h2c and
gRPC), with readiness driving nginx's upstream the way an endpoints
controller drives a Service: a watcher polls each replica's /readyz and
reloads nginx without the unready ones.

Then: (a) mixed load (reads, writes, logins) through nginx; (b) a rolling
restart during that load, with no failed call; (c) a replica killed with
SIGKILL during writes, after which every write answered 2xx is in the
database; (d) a login rate limit shared by the replicas, held within 5 %;
(e) a write through one replica visible through another within the cache
bound; (f) notification watch streams (SSE) through nginx while a writer
makes notifications and every replica restarts in turn: each client
resumes with Last-Event-ID and ends up with exactly the notifications the
database holds, numbered 1..n, none missing or repeated. Prints a summary
table; exits 1 on any violation. Every load is bounded in count and time.

Usage: rehearsal.py BINARY  (PostgreSQL on 127.0.0.1:5432, Redis on 6379)
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BINARY = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/conduit")
PG = os.environ.get("PGURL", "postgres://postgres@127.0.0.1:5432")
DB = f"conduit_rehearsal_{os.getpid()}"
CREDENTIALS_PER_MIN = 60
CACHE_TTL_S = 30
RESULTS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(sql, db="postgres"):
    return subprocess.run(["psql", f"{PG}/{db}", "-Atqc", sql], check=True, capture_output=True, text=True).stdout


def request(port, method, path, body=None, token=None, headers=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs = {"content-type": "application/json", **(headers or {})}
    if token:
        hdrs["authorization"] = f"Token {token}"
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None, hdrs)
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, (json.loads(data) if data else None)
        except ValueError:
            return response.status, data
    finally:
        conn.close()


class Replica:
    def __init__(self, index, redis_prefix, env=None):
        self.index, self.port, self.admin = index, free_port(), free_port()
        self.prefix = redis_prefix
        self.env = env or {}  # settings over the rehearsal's own
        self.process = None

    def start(self):
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DATABASE_URL": f"{PG}/{DB}",
            "JWT_SECRET": "rehearsal-secret-rehearsal-secret-rehearsal",
            "REDIS_URL": "redis://127.0.0.1:6379",
            "RATE_LIMIT_REDIS_PREFIX": self.prefix,
            "RATE_LIMIT": "1000000/min",
            "RATE_LIMIT_CREDENTIALS": f"{CREDENTIALS_PER_MIN}/min",
            "TRUSTED_PROXIES": "127.0.0.1/32",
            "CONDUIT_LISTEN": f"127.0.0.1:{self.port}",
            "CONDUIT_ADMIN_LISTEN": f"127.0.0.1:{self.admin}",
            "MIGRATE_ON_START": "false",
            "DRAIN_DELAY": "1500ms",
            "DRAIN_TIMEOUT": "10s",
            "HEALTH_CHECK_INTERVAL": "500ms",
            "CACHE_TTL": f"{CACHE_TTL_S}s",
            "PASSWORD_HASH_CONCURRENCY": "1",
            "LOG_LEVEL": "warn",
            **self.env,
        }
        self.process = subprocess.Popen([BINARY, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while not self.ready():
            if time.time() > deadline or self.process.poll() is not None:
                raise SystemExit(f"replica {self.index} did not become ready")
            time.sleep(0.1)

    def ready(self):
        try:
            return request(self.admin, "GET", "/readyz", timeout=1)[0] == 200
        except OSError:
            return False

    def stop(self, sig=signal.SIGTERM):
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)


class Nginx:
    """nginx in front of the replicas; `sync` rewrites the upstream from readiness."""

    def __init__(self, replicas):
        self.replicas, self.port, self.grpc_port = replicas, free_port(), free_port()
        self.dir = tempfile.mkdtemp(prefix="conduit-nginx-")
        os.makedirs(f"{self.dir}/logs")
        self.up = None
        self.lock = threading.Lock()
        self.write_upstream({r.index for r in replicas})
        with open(f"{self.dir}/nginx.conf", "w") as conf:
            user = "user root;" if os.geteuid() == 0 else ""
            # Streams of the service (watches, exports) are answered as they
            # are written, never buffered, and may stay open between
            # keep-alives for long.
            streaming = """
    location ~ ^/api/(notifications:watch|articles:export)$ {
      proxy_pass http://conduit;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_cache off;
      proxy_read_timeout 1h;
      proxy_next_upstream error timeout;
    }"""
            conf.write(f"""
{user}
worker_processes 1;
# A reload leaves the old worker serving its open connections; long
# streams would keep it alive indefinitely. Cut them after 10 s instead:
# the clients resume where they were (Last-Event-ID).
worker_shutdown_timeout 10s;
error_log {self.dir}/logs/error.log warn;
pid {self.dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {self.dir}/body;
  proxy_temp_path {self.dir}/proxy;
  include {self.dir}/upstream.conf;
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://conduit;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      # Reads are retried on another replica if one goes away mid-call.
      proxy_next_upstream error timeout;
    }}
{streaming}
  }}
  # HTTP/2 cleartext (prior knowledge): native gRPC, and JSON too.
  server {{
    listen 127.0.0.1:{self.grpc_port} http2;
    location / {{ grpc_pass grpc://conduit_grpc; }}
    location /api/ {{
      proxy_pass http://conduit;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
{streaming}
  }}
}}
""")
        subprocess.run(["nginx", "-p", self.dir, "-c", f"{self.dir}/nginx.conf"], check=True)

    def write_upstream(self, up):
        servers = "".join(
            f"  server 127.0.0.1:{r.port}{'' if r.index in up else ' down'};\n" for r in self.replicas
        )
        # Two pools of the same servers: cached HTTP/1.1 connections must
        # not be handed to gRPC (HTTP/2), which answers 502 on them.
        with open(f"{self.dir}/upstream.conf", "w") as f:
            for name in ("conduit", "conduit_grpc"):
                f.write(f"upstream {name} {{\n{servers}  keepalive 32;\n}}\n")
        self.up = set(up)

    def sync(self):
        up = {r.index for r in self.replicas if r.ready()}
        with self.lock:
            if up != self.up and up:
                self.write_upstream(up)
                subprocess.run(["nginx", "-p", self.dir, "-c", f"{self.dir}/nginx.conf", "-s", "reload"],
                               check=True, capture_output=True)

    def stop(self):
        subprocess.run(["nginx", "-p", self.dir, "-c", f"{self.dir}/nginx.conf", "-s", "quit"], check=False)
        time.sleep(0.5)
        shutil.rmtree(self.dir, ignore_errors=True)


def watch(nginx, stop):
    while not stop.is_set():
        nginx.sync()
        time.sleep(0.1)


def load(port, tokens, slugs, stop, stats, seconds):
    """Mixed calls until `stop` or `seconds`: reads, writes, logins."""
    started, i = time.time(), 0
    while not stop.is_set() and time.time() - started < seconds and i < 100_000:
        i += 1
        kind = ("read", "read", "read", "write", "login")[i % 5]
        try:
            if kind == "read":
                status, _ = request(port, "GET", "/api/articles?limit=5")
            elif kind == "write":
                status, body = request(port, "POST", "/api/articles", {"article": {
                    "title": f"rehearsal {threading.get_ident()} {i} {time.time()}", "description": "d", "body": "b"}},
                    token=tokens[i % len(tokens)])
                if status == 201:
                    slugs.append(body["article"]["slug"])
            else:
                # Another client address each time: logins stay under the per-client limit.
                status, _ = request(port, "POST", "/api/users/login",
                                    {"user": {"email": "loader0@example.com", "password": "rehearsal-pass"}},
                                    headers={"x-forwarded-for": f"10.9.{i % 250}.{threading.get_ident() % 250}"})
            stats.setdefault(kind, [0, 0])
            stats[kind][0 if status in (200, 201) else 1] += 1
            if status not in (200, 201):
                stats.setdefault("errors", []).append(f"{kind} {status}")
        except OSError as e:
            stats.setdefault(kind, [0, 0])[1] += 1
            stats.setdefault("errors", []).append(f"{kind} {e}")


def authors(replicas, prefix, count, subnet):
    """Registers users prefix0, prefix1, … on alternate replicas, each from
    its own address in `subnet` (a /24 written as its first three numbers),
    with one article each; returns their tokens, names and article slugs."""
    tokens, names, slugs = [], [], []
    for n in range(count):
        port = replicas[n % 2].port
        status, body = request(port, "POST", "/api/users", {"user": {
            "username": f"{prefix}{n}", "email": f"{prefix}{n}@example.com", "password": "rehearsal-pass"}},
            headers={"x-forwarded-for": f"{subnet}.{n}"})
        assert status == 201, (status, body)
        tokens.append(body["user"]["token"])
        names.append(f"{prefix}{n}")
        status, body = request(port, "POST", "/api/articles", {"article": {
            "title": f"by {prefix}{n}", "description": "d", "body": "b"}}, token=tokens[-1])
        assert status == 201, (status, body)
        slugs.append(body["article"]["slug"])
    return tokens, names, slugs


def record(name, ok, detail):
    RESULTS.append((name, "ok" if ok else "FAILED", detail))


def verdict(title):
    """Prints the recorded checks as a table under `title`; exits 1 if one failed."""
    width = max(len(title), *(len(n) for n, _, _ in RESULTS))
    print(f"\n{title:{width}}  result  detail")
    for name, outcome, detail in RESULTS:
        print(f"{name:{width}}  {outcome:6}  {detail}")
    sys.exit(0 if all(v == "ok" for _, v, _ in RESULTS) else 1)


def rolling_restart(replicas):
    """Restarts each replica in turn (SIGTERM, wait for the exit, start,
    wait until ready). Returns the seconds taken and the non-zero exits."""
    started, bad_exits = time.time(), []
    for r in replicas:
        code = r.stop()
        r.start()
        time.sleep(0.5)
        if code != 0:
            bad_exits.append((r.index, code))
    return time.time() - started, bad_exits


class Watch:
    """One user's notification stream through nginx (SSE over HTTP/1.1),
    kept open by a thread: when the stream ends or fails, it reconnects
    and resumes after the last id it received (Last-Event-ID)."""

    def __init__(self, port, name, token, stop, seconds):
        self.port, self.name, self.token, self.stop = port, name, token, stop
        self.deadline = time.time() + seconds
        self.ids = []  # notification ids in the order received
        self.reconnects = 0
        # Streams the server ended with an error event (UNAVAILABLE when it
        # shuts down; the body carries the message only, not the code).
        self.error_events = []
        # Refused connects (502/503 while a replica goes away) and streams
        # cut without an end (a reload's old nginx worker closing): the
        # client reconnects; only what it ends up with is judged.
        self.refusals, self.breaks = [], []
        self.problems = []  # malformed events
        self.connected = threading.Event()
        self.away = True  # between a stream's end and the next one's start
        self.conn = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set() and time.time() < self.deadline:
            last = self.ids[-1] if self.ids else 0
            headers = {"accept": "text/event-stream", "authorization": f"Token {self.token}"}
            # First connect: everything after 0, so nothing made before the
            # subscription took effect is missed; later ones resume.
            path = "/api/notifications:watch"
            if last:
                headers["last-event-id"] = str(last)
            else:
                path += "?after=0"
            # The read timeout is above the server's keep-alive interval (15 s).
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request("GET", path, headers=headers)
                response = self.conn.getresponse()
                if response.status != 200:
                    self.refusals.append(f"{response.status} {response.read()[:120]!r}")
                else:
                    self.connected.set()
                    self.away = False
                    self.read_events(response)
            except (OSError, http.client.HTTPException) as e:
                if not self.stop.is_set():
                    self.breaks.append(type(e).__name__)
            finally:
                self.away = True
                self.conn.close()
            if not self.stop.is_set():
                self.reconnects += 1
                # Long enough that notifications are usually made while
                # away: the resumed stream has something to replay.
                time.sleep(0.5)

    def read_events(self, response):
        fields = {}
        while not self.stop.is_set():
            line = response.readline()
            if not line:
                return  # the stream ended
            line = line.decode().rstrip("\r\n")
            if line:
                key, _, value = line.partition(":")
                fields[key] = value[1:] if value.startswith(" ") else value
                continue
            if fields.get("event") == "error":
                self.error_events.append(fields.get("data", "")[:160])
            elif fields.get("data"):
                try:
                    message = json.loads(fields["data"])
                except ValueError:
                    self.problems.append(f"not JSON: {fields['data'][:80]!r}")
                    message = {}
                if message.get("notification") is not None:
                    number = int(message["id"])
                    if fields.get("id") != message["id"]:
                        self.problems.append(f"SSE id {fields.get('id')!r} for notification {number}")
                    self.ids.append(number)
            fields = {}

    def close(self):
        self.stop.set()
        conn = self.conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read
            except OSError:
                pass
        self.thread.join(timeout=10)


def notify(port, token, slugs, stop, made, failures, seconds, watches):
    """Comments on the recipients' articles in turn, one every ~100 ms:
    each comment gives its article's author one notification. Counts in
    made["away"] those answered while the recipient was reconnecting: the
    resumed stream has to replay them."""
    started, i = time.time(), 0
    names = sorted(slugs)
    while not stop.is_set() and time.time() - started < seconds and i < 2000:
        name = names[i % len(names)]
        try:
            status, body = request(port, "POST", f"/api/articles/{slugs[name]}/comments",
                                   {"comment": {"body": f"notification {i}"}}, token=token)
            if status in (200, 201):
                made[name] += 1
                made["away"] += watches[name].away
            else:
                failures.append(f"{status} {str(body)[:100]}")
        except OSError as e:
            failures.append(str(e))
        i += 1
        time.sleep(0.1)


def main():
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    psql(f"CREATE DATABASE {DB}")
    subprocess.run([BINARY, "migrate"], env={"PATH": os.environ["PATH"], "DATABASE_URL": f"{PG}/{DB}", "LOG_LEVEL": "warn"}, check=True)
    prefix = f"conduit:rehearsal:{os.getpid()}:"
    replicas = [Replica(i, prefix) for i in range(3)]
    for r in replicas:
        r.start()
    nginx = Nginx(replicas)
    stop_watch = threading.Event()
    watcher = threading.Thread(target=watch, args=(nginx, stop_watch), daemon=True)
    watcher.start()
    try:
        port = nginx.port
        tokens = []
        for n in range(4):
            status, body = request(port, "POST", "/api/users", {"user": {
                "username": f"loader{n}", "email": f"loader{n}@example.com", "password": "rehearsal-pass"}},
                headers={"x-forwarded-for": f"10.8.0.{n}"})
            assert status == 201, (status, body)
            tokens.append(body["user"]["token"])

        # Every protocol path through nginx: HTTP/1.1, h2c, native gRPC.
        h2 = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                             f"http://127.0.0.1:{nginx.grpc_port}/api/tags"], capture_output=True, text=True).stdout
        buf = shutil.which("buf") or os.path.abspath("tests/clients/node_modules/.bin/buf")
        grpc = subprocess.run([buf, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", "{}",
                               f"http://127.0.0.1:{nginx.grpc_port}/conduit.v1.Tags/ListTags"],
                              capture_output=True, text=True, timeout=60) if os.path.exists(buf) else None
        record("protocols via nginx", h2 == "200 2" and grpc is not None and grpc.returncode == 0 and grpc.stdout.strip().startswith("{"),
               f"JSON over h2c: {h2}; gRPC (buf curl, reflection): {'ok' if grpc and grpc.returncode == 0 else grpc and grpc.stderr.strip()[:120]}")

        # (a) + (b): load through nginx while each replica restarts in turn.
        stop, stats, slugs = threading.Event(), {}, []
        workers = [threading.Thread(target=load, args=(port, tokens, slugs, stop, stats, 120)) for _ in range(6)]
        for w in workers:
            w.start()
        time.sleep(2)
        restart_s, bad_exits = rolling_restart(replicas)
        for index, code in bad_exits:
            record("rolling restart exit codes", False, f"replica {index} exited {code}")
        time.sleep(1)
        stop.set()
        for w in workers:
            w.join()
        calls = sum(v[0] + v[1] for k, v in stats.items() if k != "errors")
        failed = sum(v[1] for k, v in stats.items() if k != "errors")
        record("mixed load via nginx", calls > 0, f"{calls} calls: " + ", ".join(
            f"{k} {v[0]}" for k, v in stats.items() if k != "errors"))
        record("rolling restart, no failed call", failed == 0,
               f"3 replicas restarted in {restart_s:.1f} s; {failed} failed {stats.get('errors', [])[:3]}")

        # (c) SIGKILL during writes: every 2xx write is stored.
        victim = replicas[1]
        stop, stats, written = threading.Event(), {}, []
        writers = [threading.Thread(target=load, args=(victim.port, tokens, written, stop, stats, 20)) for _ in range(4)]
        for w in writers:
            w.start()
        time.sleep(1.5)
        victim.stop(signal.SIGKILL)
        time.sleep(0.5)
        stop.set()
        for w in writers:
            w.join()
        stored = set(psql(f"SELECT slug FROM articles", DB).split())
        missing = [s for s in written if s not in stored]
        record("SIGKILL during writes", not missing and written,
               f"{len(written)} writes answered 2xx before/around the kill, {len(missing)} missing")
        victim.start()
        time.sleep(0.5)

        # (d) A shared login limit: one client address through nginx, all replicas.
        attempts, allowed = 150, 0
        start = time.time()
        for i in range(attempts):
            status, _ = request(port, "POST", "/api/users/login",
                                {"user": {"email": "loader1@example.com", "password": "rehearsal-pass"}},
                                headers={"x-forwarded-for": "203.0.113.77"})
            allowed += status == 200
        elapsed = time.time() - start
        # A bucket of N refilling at N per minute: N + the refill during the run.
        expected = CREDENTIALS_PER_MIN + CREDENTIALS_PER_MIN * elapsed / 60
        record("shared login limit", abs(allowed - expected) <= 0.05 * expected,
               f"{allowed} of {attempts} logins allowed in {elapsed:.1f} s; limit allows {expected:.1f}")

        # (e) Cache invalidated across replicas.
        a, b = replicas[0], replicas[2]
        path = "/api/articles?limit=1"
        request(a.port, "GET", path)
        _, before = request(a.port, "GET", path)
        status, body = request(b.port, "POST", "/api/articles", {"article": {
            "title": f"seen everywhere {time.time()}", "description": "d", "body": "b"}}, token=tokens[0])
        t0 = time.time()
        seen = None
        while time.time() - t0 < CACHE_TTL_S:
            _, now = request(a.port, "GET", path)
            if now["articles"][0]["slug"] == body["article"]["slug"]:
                seen = time.time() - t0
                break
            time.sleep(0.02)
        record("cache invalidated across replicas", seen is not None and seen < 2,
               f"write via replica 2 visible via replica 0 after {seen if seen is None else round(seen * 1000)} ms (TTL {CACHE_TTL_S} s)")

        # (f) Watch streams through nginx while notifications are made and
        # every replica restarts: resumed streams lose and repeat nothing.
        names = [f"recipient{n}" for n in range(5)]
        recipients, slugs = {}, {}
        for n, name in enumerate(names + ["notifier"]):
            status, body = request(port, "POST", "/api/users", {"user": {
                "username": name, "email": f"{name}@example.com", "password": "rehearsal-pass"}},
                headers={"x-forwarded-for": f"10.7.0.{n}"})
            assert status == 201, (status, body)
            recipients[name] = body["user"]["token"]
        notifier = recipients.pop("notifier")
        for name in names:
            status, body = request(port, "POST", "/api/articles", {"article": {
                "title": f"watched by {name}", "description": "d", "body": "b"}}, token=recipients[name])
            assert status == 201, (status, body)
            slugs[name] = body["article"]["slug"]
        stop_watches, stop_writes = threading.Event(), threading.Event()
        watches = [Watch(port, name, recipients[name], stop_watches, 90) for name in names]
        for w in watches:
            w.connected.wait(timeout=10)
        made, failures = {name: 0 for name in names + ["away"]}, []
        writer = threading.Thread(target=notify, args=(port, notifier, slugs, stop_writes, made, failures, 60,
                                                       {w.name: w for w in watches}))
        writer.start()
        time.sleep(1)
        restart_s, bad_exits = rolling_restart(replicas)
        time.sleep(1)
        stop_writes.set()
        writer.join()

        def held():
            """Per recipient: the highest notification number, how many
            notifications and how many of the notifier's comments the
            database holds."""
            rows = psql(f"""SELECT u.username,
                COALESCE((SELECT max(seq) FROM notifications WHERE recipient_id = u.id), 0),
                (SELECT count(*) FROM notifications WHERE recipient_id = u.id),
                (SELECT count(*) FROM comments c JOIN articles a ON a.id = c.article_id
                 WHERE a.author_id = u.id AND c.author_id = (SELECT id FROM users WHERE username = 'notifier'))
                FROM users u WHERE u.username LIKE 'recipient%'""", DB)
            return {r.split("|")[0]: tuple(int(x) for x in r.split("|")[1:]) for r in rows.split()}

        # Settle: the last jobs run and the last events arrive (bounded).
        settle_until = time.time() + 5
        while True:
            db = held()
            settled = all(db[w.name][0] == db[w.name][2] and (w.ids[-1] if w.ids else 0) == db[w.name][0]
                          for w in watches)
            if settled or time.time() > settle_until:
                break
            time.sleep(0.25)
        for w in watches:
            w.close()
        wrong = []
        for w in watches:
            top, count, comments = db[w.name]
            if w.ids != list(range(1, top + 1)) or count != top or comments != top:
                dups = len(w.ids) - len(set(w.ids))
                gaps = sorted(set(range(1, top + 1)) - set(w.ids))
                wrong.append(f"{w.name}: received {len(w.ids)} ({dups} repeated, missing {gaps[:5]}), "
                             f"database holds 1..{top} ({count} rows) for {comments} comments")
        problems = [f"{w.name}: {p}" for w in watches for p in w.problems]
        delivered = sum(len(w.ids) for w in watches)
        ended = [e for w in watches for e in w.error_events]
        record("watch streams through a rolling restart",
               not wrong and not failures and not bad_exits and delivered > 0 and not problems,
               f"{delivered} notifications to {len(watches)} recipients"
               + ("" if wrong else ", each exactly 1..n of the database")
               + f" (~{made['away']} made while their stream was away, replayed on resuming); "
               f"{sum(w.reconnects for w in watches)} reconnects "
               f"({len(ended)} after an error event {sorted(set(ended))[:2]}, "
               f"{sum(len(w.breaks) for w in watches)} cut, {sum(len(w.refusals) for w in watches)} refused "
               f"{sorted(set(r for w in watches for r in w.refusals))[:2]}); "
               f"{sum(made[n] for n in names)} comments, {len(failures)} failed {failures[:2]}; "
               f"3 replicas restarted in {restart_s:.1f} s, exits {bad_exits or 'all 0'}"
               + (f"; {wrong[:3]}" if wrong else "") + (f"; {problems[:3]}" if problems else ""))
    finally:
        stop_watch.set()
        nginx.stop()
        for r in replicas:
            if r.process and r.process.poll() is None:
                r.stop()
        psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")

    verdict("check")


if __name__ == "__main__":
    main()
