"""conduit behind PgBouncer in transaction mode, on loopback: two replicas
whose pools (16 connections and the job workers' each) go through one
PgBouncer holding 4 server connections, with DATABASE_DIRECT_URL carrying
each replica's one LISTEN connection and the migrations past it. PgBouncer
runs the Kubernetes component's pgbouncer.ini, with loopback addresses and
that pool size.

Checks, under a mixed load on both replicas (reads, article writes,
favorites, follows, comments that notify their articles' authors through
the job queue): (a) every call answers 2xx; (b) PostgreSQL never sees more
client connections for the database than PgBouncer's pool plus the two
direct listeners (and a migration); (c) a write through one replica is seen
through the other at once (cache invalidation travels by LISTEN/NOTIFY over
the direct connections); (d) notification streams (SSE) open on both
replicas receive exactly the notifications the database holds, numbered
1..n. Prints a table; exits 1 on any violation. Bounded in time and count.

Usage: pgbouncer-rehearsal.py BINARY [--listen-through-pooler]
       (PostgreSQL on 127.0.0.1:5432, Redis on 6379)
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rehearsal  # noqa: E402  (its replicas, requests, watch streams and verdict)
from rehearsal import free_port, psql, record, request  # noqa: E402

BINARY = os.path.abspath(next((a for a in sys.argv[1:] if not a.startswith("--")), "target/release/conduit"))
# Leaves DATABASE_DIRECT_URL unset, to show why it is needed: the LISTEN
# connection goes through the pooler and other requests receive its
# notifications (sqlx fails them: "unexpected message").
LISTEN_THROUGH_POOLER = "--listen-through-pooler" in sys.argv
PG = rehearsal.PG
DB = f"conduit_pgbouncer_{os.getpid()}"
POOL_SIZE = 4
PASSWORD = "rehearsal-password"  # checked by PgBouncer (SCRAM); the server trusts loopback
SHIPPED_INI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "k8s", "components", "pgbouncer", "pgbouncer.ini")
LOAD_SECONDS = 15


class PgBouncer:
    """PgBouncer in transaction mode in front of 127.0.0.1:5432, with what
    conduit needs of it (docs/deploying.md, Behind PgBouncer)."""

    def __init__(self, binary):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="conduit-pgbouncer-")
        os.chmod(self.dir, 0o755)
        with open(f"{self.dir}/userlist.txt", "w") as f:
            f.write(f'"postgres" "{PASSWORD}"\n')
        with open(f"{self.dir}/databases.ini", "w") as f:
            f.write(f"[databases]\n{DB} = host=127.0.0.1 port=5432 dbname={DB}\n")
        # The Kubernetes component's file, as shipped but for where it
        # listens, its files and a pool small enough to be shared.
        overrides = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "auth_file": f"{self.dir}/userlist.txt",
            "default_pool_size": str(POOL_SIZE),
            "max_db_connections": str(POOL_SIZE),
        }
        lines, found = [], set()
        for line in open(SHIPPED_INI):
            key = line.split("=", 1)[0].strip()
            if key in overrides:
                line, _ = f"{key} = {overrides[key]}\n", found.add(key)
            elif line.startswith("%include"):
                line, _ = f"%include {self.dir}/databases.ini\n", found.add("%include")
            lines.append(line)
        if found != set(overrides) | {"%include"}:
            raise SystemExit(f"{SHIPPED_INI} lacks {sorted(set(overrides) | {'%include'} - found)}")
        lines.insert(lines.index("[pgbouncer]\n") + 1,
                     f"logfile = {self.dir}/pgbouncer.log\npidfile = {self.dir}/pgbouncer.pid\nadmin_users = postgres\n")
        with open(f"{self.dir}/pgbouncer.ini", "w") as f:
            f.writelines(lines)
        command = [binary, f"{self.dir}/pgbouncer.ini"]
        # PgBouncer refuses to run as root; -u switches to the user given,
        # who then writes the log and pid file.
        if os.geteuid() == 0:
            command[1:1] = ["-u", "postgres"]
            shutil.chown(self.dir, "postgres")
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    raise SystemExit(f"PgBouncer did not start: {self.log()[-400:]}")
                time.sleep(0.1)

    def url(self, db=DB):
        return f"postgres://postgres:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def log(self):
        try:
            with open(f"{self.dir}/pgbouncer.log") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def replica(index, bouncer, migrate):
    """A replica of the rehearsal's, its pools through PgBouncer and its
    listener (and, for one of them, the migrations) past it."""
    return rehearsal.Replica(index, f"conduit:pgbouncer:{os.getpid()}:", env={
        "DATABASE_URL": bouncer.url(),
        **({} if LISTEN_THROUGH_POOLER else {"DATABASE_DIRECT_URL": f"{PG}/{DB}"}),
        "MIGRATE_ON_START": "true" if migrate else "false",
        "JOB_WORKERS": "2",
        "DB_MAX_CONNECTIONS": "16",
    })


def connections():
    """Client connections PostgreSQL holds for the rehearsal's database."""
    return int(psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{DB}' AND backend_type = 'client backend'"))


def mixed(port, token, own, others, authors, stats, stop, seconds):
    """One client's calls on one replica until `stop` or `seconds`."""
    started, i = time.time(), 0
    while not stop.is_set() and time.time() - started < seconds and i < 20_000:
        i += 1
        slug = others[i % len(others)]
        calls = (
            ("list", "GET", "/api/articles?limit=10", None),
            ("article", "GET", f"/api/articles/{slug}", None),
            ("favorite", "POST", f"/api/articles/{slug}/favorite", None),
            ("unfavorite", "DELETE", f"/api/articles/{slug}/favorite", None),
            ("feed", "GET", "/api/articles/feed?limit=5", None),
            ("follow", "POST", f"/api/profiles/{authors[i % len(authors)]}/follow", None),
            ("create", "POST", "/api/articles", {"article": {"title": f"pooled {own} {i}", "description": "d", "body": "b"}}),
        )
        kind, method, path, body = calls[i % len(calls)]
        try:
            status, answer = request(port, method, path, body, token=token)
        except OSError as e:
            status, answer = 0, str(e)
        entry = stats.setdefault(kind, [0, 0])
        entry[0 if status in (200, 201) else 1] += 1
        if status not in (200, 201):
            stats.setdefault("errors", []).append(f"{method} {path} {status} {str(answer)[:120]}")


def main():
    bouncer_binary = subprocess.run(["bash", os.path.join(os.path.dirname(__file__), "install-pgbouncer.sh")],
                                    check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    # PgBouncer first: a failed start leaves no database behind.
    bouncer = PgBouncer(bouncer_binary)
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    psql(f"CREATE DATABASE {DB}")
    # What conduit asks for in its startup packet, which PgBouncer drops.
    psql(f"ALTER DATABASE {DB} SET plan_cache_mode = force_generic_plan")
    psql(f"ALTER DATABASE {DB} SET jit = off")
    replicas = []
    peak = [0]
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.is_set():
            try:
                peak[0] = max(peak[0], connections())
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # `migrate` through the pooler's URL, past it by the direct one.
        migrated = subprocess.run([BINARY, "migrate"], env={
            "PATH": os.environ["PATH"], "DATABASE_URL": bouncer.url(), "DATABASE_DIRECT_URL": f"{PG}/{DB}",
            "LOG_LEVEL": "warn"}, capture_output=True, text=True, timeout=60)
        record("migrate past the pooler", migrated.returncode == 0,
               f"exit {migrated.returncode} {migrated.stderr.strip()[:160]}")
        replicas = [replica(0, bouncer, migrate=True), replica(1, bouncer, migrate=False)]
        for r in replicas:
            r.start()

        tokens, names, slugs = rehearsal.authors(replicas, "pooled", 6, "10.6.0")

        # Recipients 0..2 watch their notifications, on alternate replicas.
        stop_watches = threading.Event()
        watches = [rehearsal.Watch(replicas[n % 2].port, names[n], tokens[n], stop_watches, LOAD_SECONDS + 30)
                   for n in range(3)]
        for w in watches:
            w.connected.wait(timeout=10)

        stop, stats = threading.Event(), {}
        clients = []
        for n in range(6):
            others = [s for k, s in enumerate(slugs) if k != n]
            authors = [a for k, a in enumerate(names) if k != n]
            clients.append(threading.Thread(target=mixed, args=(
                replicas[n % 2].port, tokens[n], names[n], others, authors, stats, stop, LOAD_SECONDS)))
        # Comments on the recipients' articles, through both replicas: each
        # is one notification for its article's author (a job, then NOTIFY).
        commented = {n: 0 for n in range(3)}
        comment_failures = []

        def comment():
            started, i = time.time(), 0
            while not stop.is_set() and time.time() - started < LOAD_SECONDS and i < 2000:
                n = i % 3
                try:
                    status, body = request(replicas[i % 2].port, "POST", f"/api/articles/{slugs[n]}/comments",
                                           {"comment": {"body": f"pooled comment {i}"}}, token=tokens[5])
                except OSError as e:
                    status, body = 0, str(e)
                if status in (200, 201):
                    commented[n] += 1
                else:
                    comment_failures.append(f"{status} {str(body)[:120]}")
                i += 1
                time.sleep(0.05)

        clients.append(threading.Thread(target=comment))
        for c in clients:
            c.start()

        # (c) meanwhile: a write through replica 1 is read through replica 0,
        # whose answer was cached (an author nobody else writes as).
        status, body = request(replicas[1].port, "POST", "/api/users", {"user": {
            "username": "witness", "email": "witness@example.com", "password": "rehearsal-pass"}},
            headers={"x-forwarded-for": "10.6.1.1"})
        assert status == 201, (status, body)
        witness = body["user"]["token"]
        path = "/api/articles?author=witness&limit=1"
        request(replicas[0].port, "GET", path)
        time.sleep(1)
        status, body = request(replicas[1].port, "POST", "/api/articles", {"article": {
            "title": f"seen through the other replica {time.time()}", "description": "d", "body": "b"}}, token=witness)
        t0, seen = time.time(), None
        while status == 201 and time.time() - t0 < 10:
            _, now = request(replicas[0].port, "GET", path)
            if now["articles"] and now["articles"][0]["slug"] == body["article"]["slug"]:
                seen = time.time() - t0
                break
            time.sleep(0.02)
        for c in clients:
            c.join()

        calls = sum(v[0] + v[1] for k, v in stats.items() if k != "errors")
        failed = sum(v[1] for k, v in stats.items() if k != "errors")
        record("mixed load through PgBouncer", calls > 0 and failed == 0 and not comment_failures,
               f"{calls} calls on 2 replicas in {LOAD_SECONDS} s, {failed} failed {stats.get('errors', [])[:2]}; "
               + ", ".join(f"{k} {v[0]}" for k, v in sorted(stats.items()) if k != "errors")
               + f"; {sum(commented.values())} comments, {len(comment_failures)} failed {comment_failures[:2]}")
        record("cache invalidated across replicas", seen is not None and seen < 2,
               f"write via replica 1 read via replica 0 after {seen if seen is None else round(seen * 1000)} ms")

        # (d) every notification delivered once, numbered 1..n.
        def held(name):
            row = psql(f"""SELECT COALESCE(max(seq), 0), count(*) FROM notifications
                           WHERE recipient_id = (SELECT id FROM users WHERE username = '{name}')""", DB)
            return tuple(int(x) for x in row.split("|"))

        settle_until = time.time() + 10
        while time.time() < settle_until:
            if all(held(w.name)[0] == (w.ids[-1] if w.ids else 0) and w.ids for w in watches):
                break
            time.sleep(0.25)
        stop_watches.set()
        for w in watches:
            w.close()
        wrong = []
        for n, w in enumerate(watches):
            top, count = held(w.name)
            if w.ids != list(range(1, top + 1)) or count != top or top < commented[n]:
                wrong.append(f"{w.name}: received {len(w.ids)} (last {w.ids[-1:]}), database 1..{top} "
                             f"({count} rows) for {commented[n]} comments")
        record("notification streams, exactly once", not wrong and sum(len(w.ids) for w in watches) > 0,
               f"{sum(len(w.ids) for w in watches)} notifications to {len(watches)} recipients"
               + (f"; {wrong}" if wrong else ", each exactly 1..n of the database"))

        # (b) the server connections stayed within the pool.
        stop_sampling.set()
        sampler.join()
        bound = POOL_SIZE + len(replicas) + 1
        pools = subprocess.run(["psql", bouncer.url("pgbouncer"), "-Atc", "SHOW POOLS"],
                               capture_output=True, text=True).stdout.strip()
        clients_seen = sum(int(line.split("|")[2]) for line in pools.splitlines() if line.startswith(f"{DB}|"))
        record("server connections within the pool", 0 < peak[0] <= bound,
               f"peak {peak[0]} connections to PostgreSQL (bound: pool {POOL_SIZE} + {len(replicas)} listeners + 1 migration) "
               f"for {clients_seen} client connections to PgBouncer at the end")
    finally:
        stop_sampling.set()
        for r in replicas:
            if r.process and r.process.poll() is None:
                r.stop()
        bouncer_log = bouncer.log()
        bouncer.stop()
        psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    complaints = [line for line in bouncer_log.splitlines() if " ERROR " in line or " FATAL " in line]
    record("PgBouncer's log", not complaints, f"{len(complaints)} errors {complaints[:2]}")

    rehearsal.verdict("check (behind PgBouncer, transaction mode)")

if __name__ == "__main__":
    main()
