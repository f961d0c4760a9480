"""conduit on a highly available PostgreSQL, on loopback: one etcd member,
three PostgreSQL 15 nodes under Patroni (`synchronous_mode`, failsafe mode),
HAProxy routing a primary port by Patroni's `/primary` check and a replica
port by `/replica`, and two conduit replicas writing through the first and
reading through the second (READ_DATABASE_URL), with notification watches
open and a mixed write load running.

Steps, each measured under that load:
(a) `kill -9` of the primary's PostgreSQL and of its Patroni: time to a new
    primary, time until conduit answers writes again, calls failed, and
    acknowledged writes missing afterwards (must be 0);
(b) `patronictl switchover` to the synchronous standby: calls failed,
    acknowledged writes missing (0);
(c) etcd stopped for longer than the leader's TTL: the primary keeps its
    role (failsafe mode) and conduit keeps answering.
Creations are sent with an Idempotency-Key and retried with it until
acknowledged, as a client that does not know a write's outcome should:
afterwards no article or comment exists twice. Then: every notification
the database holds reached its recipient's watch exactly once, in order.

Prints a table; exits 1 on any violation. Bounded in time and count.

Usage: failover-rehearsal.py BINARY   (Redis on 127.0.0.1:6379; Debian's
       patroni, etcd-server and haproxy installed; PostgreSQL 15's binaries)
"""

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rehearsal  # noqa: E402  (its replicas, requests, watch streams and verdict)
from rehearsal import free_port, record, request  # noqa: E402

BINARY = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/conduit")
# PostgreSQL's server programs, as Debian installs them (the newest there).
BIN_DIR = max((f"/usr/lib/postgresql/{v}/bin" for v in os.listdir("/usr/lib/postgresql") if v.isdigit()),
              key=lambda path: int(path.split("/")[4]), default="/usr/lib/postgresql/15/bin")
DB = "conduit"
NODES = 3
# Patroni refuses a TTL much below 20 s; the leader key outlives a dead
# primary by up to this long, which bounds how fast a failover can be.
TTL = 20
# Each step's load runs this long at most (and until its step ends).
STEP_SECONDS = 60


def as_postgres():
    """Popen arguments that run a process as `postgres` when root:
    PostgreSQL refuses root, and Patroni starts it."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


class Cluster:
    """etcd, three Patroni nodes and HAProxy in one temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="conduit-failover-")
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.etcd_port, self.etcd_peer = free_port(), free_port()
        self.pg = [free_port() for _ in range(NODES)]
        self.rest = [free_port() for _ in range(NODES)]
        self.primary_port, self.replica_port = free_port(), free_port()
        self.etcd = None
        self.patroni = [None] * NODES
        self.haproxy = None

    def path(self, name):
        return os.path.join(self.dir, name)

    def log(self, name):
        return open(self.path(f"{name}.log"), "ab")

    def start_etcd(self):
        command = [
            "etcd", "--name", "e0", "--data-dir", self.path("etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer}",
            "--initial-cluster", f"e0=http://127.0.0.1:{self.etcd_peer}",
            "--initial-cluster-state", "new" if not os.path.exists(self.path("etcd")) else "existing",
        ]
        log = self.log("etcd")
        self.etcd = subprocess.Popen(command, stdout=log, stderr=log, **as_postgres())
        wait_for(lambda: http_status(self.etcd_port, "GET", "/health") == 200, 15, "etcd to answer")

    def config(self, n):
        """Patroni's configuration of node n (YAML is a superset of JSON)."""
        return {
            "scope": "conduit-rehearsal",
            "namespace": "/rehearsal/",
            "name": f"node{n}",
            "restapi": {"listen": f"127.0.0.1:{self.rest[n]}", "connect_address": f"127.0.0.1:{self.rest[n]}"},
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_port}"},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": 2,
                    "retry_timeout": 5,
                    # Patroni's default (1 MiB behind the leader's last
                    # published position) left both standbys refusing to be
                    # promoted under this write load, and the cluster with no
                    # primary. With synchronous_mode the promoted standby holds
                    # every acknowledged commit, so lag costs no data here.
                    "maximum_lag_on_failover": 1 << 30,
                    # Only a synchronous standby is promoted, and commits wait
                    # for it: no acknowledged write is lost with the primary.
                    "synchronous_mode": True,
                    # Without etcd, a primary that reaches every member keeps
                    # its role instead of demoting itself.
                    "failsafe_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {
                            "max_connections": 100,
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_log_hints": "on",
                            "hot_standby": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg[n]}",
                "connect_address": f"127.0.0.1:{self.pg[n]}",
                "data_dir": self.path(f"node{n}"),
                "bin_dir": BIN_DIR,
                "pgpass": self.path(f"pgpass{n}"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "rehearsal"},
                    "replication": {"username": "replicator", "password": "rehearsal"},
                    "rewind": {"username": "postgres", "password": "rehearsal"},
                },
                "pg_hba": [
                    "local all all trust",
                    "host replication replicator 127.0.0.1/32 trust",
                    "host all all 127.0.0.1/32 trust",
                ],
                "parameters": {"unix_socket_directories": self.dir, "shared_buffers": "32MB"},
            },
            "tags": {"nofailover": False, "noloadbalance": False},
        }

    def config_file(self, n):
        path = self.path(f"node{n}.yml")
        with open(path, "w") as f:
            json.dump(self.config(n), f, indent=1)
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")
        return path

    def start_node(self, n):
        log = self.log(f"patroni{n}")
        self.patroni[n] = subprocess.Popen(["patroni", self.config_file(n)], cwd=self.dir, stdout=log, stderr=log,
                                           **as_postgres())

    def start_haproxy(self):
        def servers():
            return "".join(f"  server node{n} 127.0.0.1:{self.pg[n]} check port {self.rest[n]}\n" for n in range(NODES))
        # Health checks every 500 ms, two failures mark a node down, and its
        # open connections are cut then: a client never writes to a
        # demoted primary through the primary port.
        config = (
            "global\n  maxconn 500\n"
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30m\n  timeout server 30m\n"
            "  timeout check 1s\n"
            "  default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n"
            f"listen primary\n  bind 127.0.0.1:{self.primary_port}\n  option httpchk GET /primary\n"
            "  http-check expect status 200\n" + servers()
            + f"listen replicas\n  bind 127.0.0.1:{self.replica_port}\n  balance roundrobin\n"
            "  option httpchk GET /replica\n  http-check expect status 200\n" + servers()
        )
        with open(self.path("haproxy.cfg"), "w") as f:
            f.write(config)
        log = self.log("haproxy")
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", self.path("haproxy.cfg")], stdout=log, stderr=log)

    def roles(self):
        """Each node's role by its REST API (`None` when it does not answer)."""
        found = []
        for port in self.rest:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/patroni")
                found.append(json.loads(conn.getresponse().read()).get("role"))
                conn.close()
            except (OSError, ValueError, http.client.HTTPException):
                found.append(None)
        return found

    def leader(self):
        roles = self.roles()
        primaries = [n for n, role in enumerate(roles) if role in ("master", "primary")]
        return primaries[0] if len(primaries) == 1 else None

    def cluster(self):
        """Patroni's view of the cluster (`GET /cluster` on any node that answers)."""
        for port in self.rest:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/cluster")
                return json.loads(conn.getresponse().read())
            except (OSError, ValueError, http.client.HTTPException):
                continue
        return {}

    def streaming(self):
        """How many standbys stream from the leader, one of them synchronously
        (Patroni calls a standby "running" before it streams anything)."""
        leader = self.leader()
        if leader is None:
            return 0
        out = subprocess.run(["psql", self.url(self.pg[leader], "postgres"), "-Atqc",
                              "SELECT count(*) FILTER (WHERE state = 'streaming'), "
                              "count(*) FILTER (WHERE state = 'streaming' AND sync_state = 'sync') "
                              "FROM pg_stat_replication"], capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return 0
        streaming, sync = (int(x) for x in out.stdout.strip().split("|"))
        return streaming if sync == 1 else 0

    def url(self, port, db=DB):
        return f"postgres://postgres@127.0.0.1:{port}/{db}"

    def sql(self, statement, db=DB):
        # On standard input: the lists of acknowledged writes outgrow an argument.
        return subprocess.run(["psql", self.url(self.primary_port, db), "-Atq", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                              input=statement, check=True, capture_output=True, text=True, timeout=20).stdout

    def postmaster_pid(self, n):
        with open(self.path(f"node{n}/postmaster.pid")) as f:
            return int(f.readline())

    def stop(self):
        for process in [self.haproxy, *self.patroni]:
            if process and process.poll() is None:
                process.terminate()
        for process in [*self.patroni, self.haproxy]:
            if process:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        # A node whose Patroni was killed leaves its PostgreSQL behind.
        for n in range(NODES):
            subprocess.run([f"{BIN_DIR}/pg_ctl", "-D", self.path(f"node{n}"), "-m", "immediate", "stop"],
                           capture_output=True, **as_postgres())
        if self.etcd and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.etcd.kill()

    def tail(self, name, lines=15):
        try:
            with open(self.path(f"{name}.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def http_status(port, method, path):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request(method, path)
        status = conn.getresponse().status
        conn.close()
        return status
    except (OSError, http.client.HTTPException):
        return None


def wait_for(check, seconds, what):
    deadline = time.time() + seconds
    while not check():
        if time.time() > deadline:
            raise SystemExit(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


class Load:
    """Writes and reads through both conduit replicas from several client
    threads, each call logged with its start, end and outcome; the
    acknowledged writes are kept to be looked for afterwards."""

    def __init__(self, replicas, tokens, slugs, recipients):
        self.replicas, self.tokens, self.slugs, self.recipients = replicas, tokens, slugs, recipients
        self.calls = []  # (start, end, kind, status)
        self.articles, self.comments = [], []  # acknowledged: slugs, (slug, id)
        self.commented = {}  # recipient -> comments acknowledged on their article
        self.retried = 0  # creations acknowledged only after a retry with their key
        self.unanswered = 0  # attempts that got no answer (connection lost during the call)
        self.refused = []  # creations refused with a client error: none is expected
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = []

    def call(self, kind, port, method, path, body=None, token=None, key=None):
        start = time.time()
        headers = {"idempotency-key": key} if key else None
        try:
            status, answer = request(port, method, path, body, token=token, headers=headers, timeout=15)
        except (OSError, http.client.HTTPException) as e:
            status, answer = 0, str(e)
        if status in (200, 201) and method == "POST" and not isinstance(answer, dict):
            status = -1  # an acknowledgement that cannot be read counts as a failure
        with self.lock:
            self.calls.append((start, time.time(), kind, status))
        return status, answer

    def write(self, n, i, kind, path, body):
        """One creation, sent with its own key until acknowledged (at most
        STEP_SECONDS, alternating replicas): whatever became of an attempt
        that failed, the retry takes effect once."""
        key, given_up = f"failover-{n}-{i}", time.time() + STEP_SECONDS
        attempt = 0
        while True:
            port = self.replicas[(n + i + attempt) % 2].port
            status, answer = self.call(kind, port, "POST", path, body, self.tokens[n], key)
            with self.lock:
                if status in (0, -1):
                    self.unanswered += 1  # sent, but its outcome is unknown to the client
                if status in (200, 201) and attempt:
                    self.retried += 1
                if 400 <= status < 500 and status not in (409, 429):
                    self.refused.append(f"{kind} {key}: {status} {answer}")
            # Retried: no answer, 409 (a first call with the key still
            # running), 429 and 5xx; anything else is the write's outcome.
            if status not in (0, -1, 409, 429) and status < 500 or time.time() > given_up:
                return status, answer
            attempt += 1
            time.sleep(0.01)

    def client(self, n):
        i = 0
        while not self.stop.is_set() and i < 100_000:
            i += 1
            port = self.replicas[(n + i) % 2].port
            token = self.tokens[n]
            step = i % 4
            if step == 0:
                status, answer = self.write(n, i, "create", "/api/articles", {"article": {
                    "title": f"failover {n} {i}", "description": "d", "body": "b"}})
                if status == 201:
                    with self.lock:
                        self.articles.append(answer["article"]["slug"])
            elif step == 1:
                recipient = self.recipients[i % len(self.recipients)]
                status, answer = self.write(n, i, "comment", f"/api/articles/{self.slugs[recipient]}/comments",
                                            {"comment": {"body": f"failover comment {n} {i}"}})
                if status in (200, 201):
                    with self.lock:
                        self.comments.append(answer["comment"]["id"])
                        # Nobody is told of their own comment.
                        if recipient != n:
                            self.commented[recipient] = self.commented.get(recipient, 0) + 1
            elif step == 2:
                self.call("list", port, "GET", "/api/articles?limit=10", token=token)
            else:
                self.call("feed", port, "GET", "/api/articles/feed?limit=5", token=token)
            time.sleep(0.01)

    def start(self, clients):
        for n in range(clients):
            thread = threading.Thread(target=self.client, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def window(self, since):
        """The calls that ended at `since` or later: those in flight at a
        fault count with it."""
        with self.lock:
            return [c for c in self.calls if c[1] >= since]


def rehearsal_metric(admin, line_start):
    """A value from a conduit's /metrics (0 when absent)."""
    status, text = request(admin, "GET", "/metrics")
    text = text.decode() if isinstance(text, bytes) else str(text)
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


def failed(calls):
    return [c for c in calls if c[3] not in (200, 201)]


def writes_back_after(load, since):
    """Seconds from `since` until writes succeed again: the end of the first
    successful write that started after the last failed one (0 when none failed)."""
    calls = load.window(since)
    writes = [c for c in calls if c[2] in ("create", "comment")]
    failures = failed(writes)
    if not failures:
        return 0.0, 0
    last_failure = max(c[1] for c in failures)
    back = [c[1] for c in writes if c[3] in (200, 201) and c[0] >= last_failure]
    return (min(back) - since if back else None), len(failures)


def missing_writes(cluster, load):
    """Acknowledged articles and comments the primary does not hold."""
    with load.lock:
        slugs, comments = list(load.articles), list(load.comments)
    quoted = ",".join("'" + s.replace("'", "''") + "'" for s in slugs) or "''"
    held = int(cluster.sql(f"SELECT count(*) FROM articles WHERE slug IN ({quoted})"))
    ids = ",".join(str(int(c)) for c in comments) or "0"
    held_comments = int(cluster.sql(f"SELECT count(*) FROM comments WHERE id IN ({ids})"))
    return len(slugs) - held, len(comments) - held_comments, len(slugs), len(comments)


def describe(calls):
    kinds = {}
    for c in calls:
        entry = kinds.setdefault(c[2], [0, 0])
        entry[0 if c[3] in (200, 201) else 1] += 1
    return ", ".join(f"{k} {v[0]}/{v[0] + v[1]}" for k, v in sorted(kinds.items()))


def main():
    for tool in ("patroni", "patronictl", "etcd", "haproxy"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed: apt-get install patroni etcd-server haproxy")
    # `timeout` ends a run with SIGTERM: clean up as after any failure.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    cluster = Cluster()
    replicas, watches = [], []
    finished = False
    stop_watches = threading.Event()
    load = None
    try:
        cluster.start_etcd()
        for n in range(NODES):
            cluster.start_node(n)
        cluster.start_haproxy()
        wait_for(lambda: cluster.leader() is not None, 60, "Patroni to elect a leader")
        wait_for(lambda: cluster.streaming() == NODES - 1, 90, "both standbys to stream, one synchronously")
        wait_for(lambda: http_status(cluster.rest[cluster.leader()], "GET", "/primary") == 200, 10, "the leader's check")
        wait_for(lambda: subprocess.run(["psql", cluster.url(cluster.primary_port, "postgres"), "-Atqc", "SELECT 1"],
                                        capture_output=True).returncode == 0, 20, "HAProxy's primary port")
        cluster.sql(f"CREATE DATABASE {DB}", db="postgres")
        migrated = subprocess.run([BINARY, "migrate"], env={"PATH": os.environ["PATH"], "LOG_LEVEL": "warn",
                                                            "DATABASE_URL": cluster.url(cluster.primary_port)},
                                  capture_output=True, text=True, timeout=60)
        if migrated.returncode != 0:
            raise SystemExit(f"migrate failed: {migrated.stderr[-400:]}")

        prefix = f"conduit:failover:{os.getpid()}:"
        for n in range(2):
            replica = rehearsal.Replica(n, prefix, env={
                "DATABASE_URL": cluster.url(cluster.primary_port),
                "READ_DATABASE_URL": cluster.url(cluster.replica_port),
                "READ_DB_MAX_CONNECTIONS": "4",
                "DB_MAX_CONNECTIONS": "8",
                "JOB_WORKERS": "2",
            })
            replica.start()
            replicas.append(replica)

        tokens, names, slugs = rehearsal.authors(replicas, "ha", 6, "10.7.0")

        # Recipients 0..2 watch their notifications, on alternate replicas;
        # clients 3..5 comment on their articles (and write and read).
        recipients = [0, 1, 2]
        watches = [rehearsal.Watch(replicas[n % 2].port, names[n], tokens[n], stop_watches, 6 * STEP_SECONDS)
                   for n in recipients]
        for w in watches:
            w.connected.wait(timeout=10)
        load = Load(replicas, tokens, slugs, recipients)
        load.start(6)
        time.sleep(3)
        steady = load.window(0)
        record("steady load before any fault", steady and not failed(steady),
               f"{len(steady)} calls, {len(failed(steady))} failed ({describe(steady)})")

        # (a) the primary's PostgreSQL and its Patroni killed at once.
        old = cluster.leader()
        postmaster = cluster.postmaster_pid(old)
        readiness = []  # (seconds after the kill, /readyz status) of replica 0
        sampling = threading.Event()

        def sample_readiness():
            while not sampling.is_set():
                readiness.append((time.time() - killed, http_status(replicas[0].admin, "GET", "/readyz")))
                time.sleep(0.2)

        killed = time.time()
        # Patroni first, so that it cannot start PostgreSQL again in between.
        cluster.patroni[old].send_signal(signal.SIGKILL)
        os.kill(postmaster, signal.SIGKILL)
        sampler = threading.Thread(target=sample_readiness, daemon=True)
        sampler.start()
        wait_for(lambda: cluster.leader() not in (None, old), TTL + 40, "a new primary")
        promoted = time.time() - killed
        new = cluster.leader()
        wait_for(lambda: writes_back_after(load, killed)[0] is not None and time.time() - killed > promoted + 3,
                 60, "conduit's writes to succeed again")
        back, failures_a = writes_back_after(load, killed)
        step_a = load.window(killed)
        lost_articles, lost_comments, articles, comments = missing_writes(cluster, load)
        record("(a) kill -9 of the primary", lost_articles == 0 and lost_comments == 0 and back is not None,
               f"node{old} killed; node{new} primary after {promoted:.1f} s; conduit writing again after "
               f"{back:.1f} s; {len(failed(step_a))} of {len(step_a)} calls failed ({describe(step_a)}); "
               f"acknowledged writes missing: "
               f"{lost_articles} of {articles} articles, {lost_comments} of {comments} comments")
        sampling.set()
        sampler.join()
        down = [t for t, status in readiness if status == 503]
        record("(a) readiness follows the primary", down and readiness[-1][1] == 200 and min(down) < 3,
               f"/readyz 503 from {min(down, default=0):.1f} s to {max(down, default=0):.1f} s after the kill, "
               f"200 again at {next((t for t, st in readiness if down and st == 200 and t > max(down)), 0):.1f} s")

        # The killed node rejoins (pg_rewind) before the switchover.
        cluster.start_node(old)
        wait_for(lambda: cluster.streaming() == NODES - 1, 90, "the old primary to rejoin as a standby")

        # (b) a switchover to the synchronous standby, under the same load.
        def sync_standby():
            return next((m["name"] for m in cluster.cluster().get("members", []) if m.get("role") == "sync_standby"),
                        None)

        wait_for(lambda: sync_standby() is not None, 30, "Patroni to name a synchronous standby")
        sync = sync_standby()
        switched = time.time()
        out = subprocess.run(["patronictl", "-c", cluster.path(f"node{new}.yml"), "switchover", "--leader",
                              f"node{new}", "--candidate", sync, "--force"], capture_output=True, text=True, timeout=60,
                             **as_postgres())
        wait_for(lambda: cluster.leader() == int(sync[4:]), 60, f"{sync} to lead")
        switch_time = time.time() - switched
        time.sleep(5)
        back_b, _ = writes_back_after(load, switched)
        step_b = load.window(switched)
        lost_articles, lost_comments, articles, comments = missing_writes(cluster, load)
        record("(b) switchover under load",
               out.returncode == 0 and back_b is not None and lost_articles == 0 and lost_comments == 0,
               f"node{new} → {sync} in {switch_time:.1f} s; writing again after {back_b or 0:.1f} s; "
               f"{len(failed(step_b))} of {len(step_b)} calls failed ({describe(step_b)}); acknowledged writes missing: "
               f"{lost_articles} of {articles} articles, {lost_comments} of {comments} comments"
               + ("" if out.returncode == 0 else f"; patronictl: {out.stderr[-200:]}"))

        for name, calls in (("(a)", step_a), ("(b)", step_b)):
            statuses = sorted({c[3] for c in failed(calls)})
            record(f"{name} failures are fast and retryable", set(statuses) <= {503},
                   f"statuses {statuses}; slowest failed call {max((c[1] - c[0] for c in failed(calls)), default=0):.2f} s")

        # (c) etcd away for longer than the TTL: failsafe mode keeps the primary.
        leader = cluster.leader()
        cluster.etcd.terminate()
        cluster.etcd.wait(timeout=10)
        away = time.time()
        kept = True
        while time.time() - away < TTL + 10:
            kept = kept and cluster.leader() == leader
            time.sleep(0.5)
        step_c = load.window(away)
        cluster.start_etcd()
        lost_articles, lost_comments, articles, comments = missing_writes(cluster, load)
        record("(c) etcd stopped for TTL + 10 s",
               kept and step_c and not failed(step_c) and lost_articles == 0 and lost_comments == 0,
               f"node{leader} kept its role: {kept}; {len(failed(step_c))} of {len(step_c)} calls failed "
               f"({describe(step_c)}); acknowledged writes missing: {lost_articles} of {articles} articles, "
               f"{lost_comments} of {comments} comments")
        served = sum(rehearsal_metric(r.admin, 'conduit_db_reads_total{reason="replica"}') for r in replicas)
        record("reads served by the standbys", served > 0, f"{served:.0f} reads through the replica port")

        load.finish()
        # Every creation retried with its key took effect once.
        twice = cluster.sql("SELECT (SELECT count(*) FROM (SELECT title FROM articles WHERE title LIKE 'failover %' "
                            "GROUP BY title HAVING count(*) > 1) a) || '|' || "
                            "(SELECT count(*) FROM (SELECT body FROM comments WHERE body LIKE 'failover comment %' "
                            "GROUP BY body HAVING count(*) > 1) c)").strip()
        record("creations retried with their key took effect once",
               twice == "0|0" and load.retried > 0 and not load.refused,
               f"{load.retried} creations acknowledged after a retry with their key, {load.unanswered} attempts "
               f"without an answer; articles and comments written twice: {twice.replace('|', ' and ')}; "
               f"refused: {load.refused[:3] or 'none'}")
        # Every notification the database holds reached its watch once.
        def held(name):
            row = cluster.sql(f"""SELECT COALESCE(max(seq), 0), count(*) FROM notifications
                                  WHERE recipient_id = (SELECT id FROM users WHERE username = '{name}')""")
            return tuple(int(x) for x in row.split("|"))

        def queue():
            return cluster.sql("SELECT count(*) FILTER (WHERE state <> 'dead'), count(*) FILTER (WHERE state = 'dead') "
                               "FROM jobs").strip()

        # The jobs that make the notifications drain, then the watches catch up.
        settle_until = time.time() + 90
        while time.time() < settle_until:
            if queue().startswith("0|") and all(w.ids and held(w.name)[0] == w.ids[-1] for w in watches):
                break
            time.sleep(0.25)
        pending, dead = queue().split("|")
        stop_watches.set()
        for w in watches:
            w.close()
        wrong = []
        for n, w in zip(recipients, watches):
            top, count = held(w.name)
            if w.ids != list(range(1, top + 1)) or count != top or top < load.commented.get(n, 0):
                wrong.append(f"{w.name}: received {len(w.ids)} (last {w.ids[-1:]}), database 1..{top} "
                             f"({count} rows) for {load.commented.get(n, 0)} acknowledged comments by others")
        record("notifications exactly once across the faults", not wrong and all(w.ids for w in watches),
               f"{sum(len(w.ids) for w in watches)} notifications to {len(watches)} recipients, "
               f"{sum(w.reconnects for w in watches)} reconnects, jobs left {pending} (dead {dead})"
               + (f"; {wrong}" if wrong else ", each exactly 1..n of the database"))
        finished = True
    except SystemExit as e:
        logs = "".join(f"\n--- patroni{n} ---\n{cluster.tail(f'patroni{n}', 12)}" for n in range(NODES))
        record("rehearsal", False, f"{e}{logs}")
    finally:
        stop_watches.set()
        if load:
            load.finish()
        for r in replicas:
            if r.process and r.process.poll() is None:
                try:
                    r.stop()
                except subprocess.TimeoutExpired:
                    r.process.kill()
        cluster.stop()
        if finished and all(outcome == "ok" for _, outcome, _ in rehearsal.RESULTS):
            shutil.rmtree(cluster.dir, ignore_errors=True)
        else:
            print(f"logs kept in {cluster.dir}")
    rehearsal.verdict("check (Patroni, etcd and HAProxy on loopback)")


if __name__ == "__main__":
    main()
