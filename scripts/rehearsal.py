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
bound. Prints a summary table; exits 1 on any violation. Every load is
bounded in count and time.

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
    def __init__(self, index, redis_prefix):
        self.index, self.port, self.admin = index, free_port(), free_port()
        self.prefix = redis_prefix
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
            conf.write(f"""
{user}
worker_processes 1;
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


def record(name, ok, detail):
    RESULTS.append((name, "ok" if ok else "FAILED", detail))


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
        restart_started = time.time()
        for r in replicas:
            code = r.stop()
            r.start()
            time.sleep(0.5)
            if code != 0:
                record("rolling restart exit codes", False, f"replica {r.index} exited {code}")
        restart_s = time.time() - restart_started
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
    finally:
        stop_watch.set()
        nginx.stop()
        for r in replicas:
            if r.process and r.process.poll() is None:
                r.stop()
        psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")

    width = max(len(n) for n, _, _ in RESULTS)
    print(f"\n{'check':{width}}  result  detail")
    for name, verdict, detail in RESULTS:
        print(f"{name:{width}}  {verdict:6}  {detail}")
    sys.exit(0 if all(v == "ok" for _, v, _ in RESULTS) else 1)


if __name__ == "__main__":
    main()
