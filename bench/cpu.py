#!/usr/bin/env python3
"""Where the time goes: CPU microseconds per request of conduit and of
PostgreSQL, per scenario, beside throughput and latency.

Starts a private PostgreSQL (initdb into a temporary directory, a free
loopback port, pg_stat_statements with track = all; the shared server on
5432 is never touched), a release build of conduit on it, seeds the
standard dataset through the API (bench/seed.py), then for each scenario
runs wrk and counts, over a window that ends only once the job queue has
drained (or the drain bound passed; the queue's size and age at the end
are reported, so deferring work cannot look like saving it):

  - CPU of conduit (/proc/<pid>/stat) and of PostgreSQL (the postmaster,
    its live children, and the children that exited), per request;
  - transactions (pg_stat_database) and statements (pg_stat_statements,
    nested ones included) per request, and NOTIFYs (calls of statements
    that send one);
  - req/s, p50 and p99 from wrk.

Each configuration is a fresh conduit process on the same database:
`shipped` (the defaults: cache on, job workers on) and `bare` (CACHE_TTL=0s,
JOB_WORKERS=0: jobs are still enqueued, none run, and the queue is only
reported), so the cost of each is visible; `--baseline BIN` adds another
build (of main, say) as `baseline`, with bare's settings, to compare CPU per
request in the same run. A configuration named `CONFIG+replica` (say
`bare+replica`) is CONFIG reading from a streaming replica of the private
PostgreSQL (`pg_basebackup -R`, started once when one is asked for):
beside the table above, the share of reads the replica served, its CPU per
request and the most lag conduit polled during each run. `--compare 'NAME=COMMAND'` adds another RealWorld
implementation: COMMAND (run by sh, `{port}` and `{database_url}` replaced;
its CPU is that of sh and every process under it)
must start it on that loopback port with its own database on the private
PostgreSQL, created empty for it; it is seeded with the same dataset through
its own API and measured the same way (its process tree's CPU, PostgreSQL's,
statements), and its throughput is set beside conduit's: reads against
`bare` (every server does the work, no response cache), writes against
`shipped`. `--pin CPUS` runs every server measured under `taskset -c CPUS`.

Prints tables; asserts nothing. Loopback only; every load run is bounded by
--duration and every wait by a timeout; every process it starts is stopped.

Usage: python3 bench/cpu.py [--duration 10] [--connections 32]
                             [--configs shipped,bare] [--scenarios a,b]
                             [--compare 'NAME=COMMAND' ...] [--baseline BIN]
                             [--pin CPUS]
Environment: CONDUIT_BIN (default target/release/conduit).
"""

import argparse
import atexit
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.abspath(os.environ.get("CONDUIT_BIN", os.path.join(ROOT, "target/release/conduit")))
SECRET = "bench-cpu-secret-bench-cpu-secret-bench-cpu"
TICK = os.sysconf("SC_CLK_TCK")
CHILDREN = []
WORK = tempfile.mkdtemp(prefix="conduit-bench-cpu-")

SCENARIOS = [
    "list-token", "feed", "article", "favorite-mix", "comment", "follow-mix", "create-article", "fan-out-100",
]
READS = {"list-token", "feed", "article"}


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_all():
    for process in reversed(CHILDREN):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    shutil.rmtree(WORK, ignore_errors=True)


atexit.register(stop_all)


def pg_bin():
    found = sorted(d for d in os.listdir("/usr/lib/postgresql") if d.isdigit()) if os.path.isdir(
        "/usr/lib/postgresql") else []
    if found:
        return f"/usr/lib/postgresql/{found[-1]}/bin"
    path = shutil.which("initdb")
    if not path:
        sys.exit("PostgreSQL's server binaries (initdb, postgres) are needed")
    return os.path.dirname(path)


class PrivatePostgres:
    """A throw-away server: PostgreSQL refuses to run as root, so as root it
    runs as the `postgres` account."""

    def __init__(self):
        self.port = free_port()
        self.data = os.path.join(WORK, "pg")
        self.bin = pg_bin()
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chown(WORK, self.user.pw_uid, self.user.pw_gid)
        self.run([f"{self.bin}/initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync"])
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": WORK,
            "shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all",
            "pg_stat_statements.max": "10000", "max_connections": "200", "shared_buffers": "256MB",
            "fsync": "on", "synchronous_commit": "on",
        }
        self.serve(settings, "pg.log")

    def serve(self, settings, log_name):
        """Starts the server on `self.data` with `settings` and waits until it answers."""
        args = [f"{self.bin}/postgres", "-D", self.data] + [f"-c{k}={v}" for k, v in settings.items()]
        log_path = os.path.join(WORK, log_name)
        self.process = subprocess.Popen(args, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                                        preexec_fn=self.demote)
        CHILDREN.append(self.process)
        deadline = time.time() + 60
        while subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if time.time() > deadline:
                sys.exit(f"PostgreSQL ({log_name}) did not start: " + open(log_path).read()[-2000:])
            time.sleep(0.2)
        self.url = f"postgres://postgres@127.0.0.1:{self.port}"

    def demote(self):
        if self.user:
            os.setgid(self.user.pw_gid)
            os.setuid(self.user.pw_uid)

    def run(self, args):
        subprocess.run(args, check=True, capture_output=True, preexec_fn=self.demote)

    def sql(self, statement, db="conduit"):
        result = subprocess.run(["psql", f"{self.url}/{db}", "-v", "ON_ERROR_STOP=1", "-Atqc", statement],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"psql: {result.stderr.strip()[:400]}")
        return result.stdout.strip()

    def cpu_ticks(self):
        """The postmaster's own CPU, its live children's, and what its exited
        children used (cutime/cstime of the postmaster)."""
        pid = self.process.pid
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = proc_stat(int(entry))
            except OSError:
                continue
            if int(entry) == pid:
                total += fields[13] + fields[14] + fields[15] + fields[16]
            elif fields[3] == pid:
                total += fields[13] + fields[14]
        return total


class Standby(PrivatePostgres):
    """A streaming replica of the private PostgreSQL (`pg_basebackup -R`),
    for the configurations that read from one (`+replica`)."""

    def __init__(self, primary):
        self.port = free_port()
        self.data = os.path.join(WORK, "standby")
        self.bin = primary.bin
        self.user = primary.user
        self.run([f"{self.bin}/pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                  "-D", self.data, "-R", "-X", "stream", "--no-sync"])
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": WORK,
            "hot_standby": "on", "max_connections": "200", "shared_buffers": "256MB",
        }
        self.serve(settings, "standby.log")


def proc_stat(pid):
    """Fields of /proc/<pid>/stat, numbered as proc(5) numbers them minus one
    (the command, which may hold spaces, is skipped)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    rest = text[text.rindex(")") + 2:].split()
    return [0, 0] + [rest[0]] + [int(x) for x in rest[1:]]


def process_ticks(pid):
    """CPU of a process, its live descendants, and the children it reaped
    (a server started by a script may run as the script's child)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = proc_stat(int(entry))
            except OSError:
                continue
    fields = parents.get(pid)
    if fields is None:
        return 0
    total = fields[13] + fields[14] + fields[15] + fields[16]
    family = {pid}
    grew = True
    while grew:
        grew = False
        for child, f in parents.items():
            if child not in family and f[3] in family:
                family.add(child)
                total += f[13] + f[14]
                grew = True
    return total


PIN = []  # `taskset -c CPUS` when --pin is given


class Conduit:
    db = "conduit"

    def __init__(self, pg, config, binary=None, standby=None):
        self.port, self.admin = free_port(), free_port()
        env = dict(os.environ, DATABASE_URL=f"{pg.url}/conduit", JWT_SECRET=SECRET,
                   CONDUIT_LISTEN=f"127.0.0.1:{self.port}", CONDUIT_ADMIN_LISTEN=f"127.0.0.1:{self.admin}",
                   RATE_LIMIT="100000000/min", RATE_LIMIT_CREDENTIALS="100000000/min",
                   RATE_LIMIT_LOGIN_FAILURES="100000000/min", LOG_LEVEL="warn")
        # `baseline-shipped`: the baseline build with the defaults; `+replica`:
        # reads free of side effects from the standby.
        self.standby = standby if config.endswith("+replica") else None
        if self.standby:
            env.update(READ_DATABASE_URL=f"{standby.url}/conduit")
        self.workers = config.removesuffix("+replica") not in ("bare", "baseline")
        if not self.workers:
            env.update(CACHE_TTL="0s", JOB_WORKERS="0")
        self.process = subprocess.Popen(PIN + [binary or BINARY, "serve"], env=env, stdout=subprocess.DEVNULL,
                                        stderr=open(os.path.join(WORK, f"conduit-{config}.log"), "w"))
        CHILDREN.append(self.process)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until_answering(self.process, self.port, 60, "conduit", os.path.join(WORK, f"conduit-{config}.log"))

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)

    def metrics(self, prefix):
        """The values of the metric lines starting with `prefix`, by labels."""
        import urllib.request
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10).read().decode()
        return {line[len(prefix):].rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith(prefix)}


class Other:
    """Another RealWorld implementation, started by its own command on its
    own database of the private PostgreSQL."""

    workers = False

    def __init__(self, pg, name, command):
        self.port = free_port()
        self.db = "compare_" + re.sub(r"\W", "_", name.lower())
        pg.sql(f"DROP DATABASE IF EXISTS {self.db}", db="postgres")
        pg.sql(f"CREATE DATABASE {self.db}", db="postgres")
        command = command.replace("{port}", str(self.port)).replace("{database_url}", f"{pg.url}/{self.db}")
        log_path = os.path.join(WORK, f"{self.db}.log")
        self.process = subprocess.Popen(PIN + ["sh", "-c", command], stdout=open(log_path, "w"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        CHILDREN.append(self.process)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until_answering(self.process, self.port, 120, name, log_path)

    def stop(self):
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def wait_until_answering(process, port, seconds, name, log_path):
    """Returns once the server answers on `port`; exits with the end of its
    log if it stops or does not answer within `seconds`."""
    deadline = time.time() + seconds
    while not answers(port):
        if process.poll() is not None or time.time() > deadline:
            sys.exit(f"{name} did not start: {open(log_path).read()[-2000:]}")
        time.sleep(0.2)


def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /api/tags HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def write_lua(name, body, prefix=""):
    path = os.path.join(WORK, prefix + name + ".lua")
    with open(path, "w") as f:
        f.write(body)
    return path


def scripts(state, prefix=""):
    """wrk scripts for the write scenarios; tokens and slugs are inlined."""
    lua = lambda name, body: write_lua(name, body, prefix)
    tokens = "{" + ",".join(json.dumps(t) for t in state["tokens"]) + "}"
    slugs = "{" + ",".join(json.dumps(s) for s in state["slugs"]) + "}"
    names = "{" + ",".join(json.dumps(n) for n in state["names"]) + "}"
    head = f"local tokens, slugs, names = {tokens}, {slugs}, {names}\nmath.randomseed(7)\nlocal n = 0\n"
    auth = '{["Authorization"] = "Token " .. tokens[math.random(#tokens)], ["Content-Type"] = "application/json"}'
    return {
        # Odd requests favorite a random (user, article) pair; even ones
        # unfavorite the oldest pair still favorited once 32 are waiting
        # (sent some 64 requests earlier, long answered at 32 connections).
        # Every request changes something, and at the end the favorites are
        # as seeded but for the last 32, so each configuration and each
        # implementation gets the same work.
        "favorite-mix": lua("favorite", head + f"""
local pending, first, last = {{}}, 1, 0
request = function()
  n = n + 1
  local method, pair = "POST", nil
  if n % 2 == 0 and last - first >= 32 then
    method, pair = "DELETE", pending[first]
    pending[first] = nil
    first = first + 1
  else
    pair = {{math.random(#tokens), slugs[math.random(#slugs)]}}
    last = last + 1
    pending[last] = pair
  end
  return wrk.format(method, "/api/articles/" .. pair[2] .. "/favorite",
    {{["Authorization"] = "Token " .. tokens[pair[1]], ["Content-Type"] = "application/json"}})
end"""),
        "comment": lua("comment", head + f"""
request = function()
  return wrk.format("POST", "/api/articles/" .. slugs[math.random(#slugs)] .. "/comments", {auth},
    '{{"comment":{{"body":"A benchmark comment"}}}}')
end"""),
        "follow-mix": lua("follow", head + f"""
request = function()
  -- names[i] is the user of tokens[i]: never follow oneself. tokens[1] is the
  -- feed's reader, whose follows stay as seeded so that every configuration
  -- reads the same feed.
  local who = math.random(2, #tokens)
  local whom = (who + math.random(#names - 1) - 1) % #names + 1
  local method = (math.random(2) == 1) and "POST" or "DELETE"
  return wrk.format(method, "/api/profiles/" .. names[whom] .. "/follow",
    {{["Authorization"] = "Token " .. tokens[who]}})
end"""),
        "create-article": lua("create", head + f"""
local stamp = os.time()
request = function()
  n = n + 1
  return wrk.format("POST", "/api/articles", {auth},
    '{{"article":{{"title":"Bench ' .. stamp .. ' ' .. n .. ' ' .. math.random(1e9) .. '","description":"d","body":"b","tagList":["bench"]}}}}')
end"""),
        "fan-out-100": lua("fanout", f"""
local star = {json.dumps(state["star_token"])}
local stamp, n = os.time(), 0
request = function()
  n = n + 1
  return wrk.format("POST", "/api/articles", {{["Authorization"] = "Token " .. star, ["Content-Type"] = "application/json"}},
    '{{"article":{{"title":"Fan-out ' .. stamp .. ' ' .. n .. ' ' .. math.random(1e9) .. '","description":"d","body":"b","tagList":[]}}}}')
end"""),
    }


def wrk(url, args, duration, connections):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"] + args + [url],
                         capture_output=True, text=True, timeout=duration + 60).stdout

    def grab(pattern):
        m = re.search(pattern, out, re.M)
        return m.group(1) if m else None

    requests = int(grab(r"^\s*(\d+) requests in") or 0)
    non2xx = int(grab(r"Non-2xx or 3xx responses: (\d+)") or 0)
    return {"requests": requests, "rps": float(grab(r"^Requests/sec:\s+([\d.]+)") or 0),
            "p50": grab(r"^\s+50%\s+(\S+)"), "p99": grab(r"^\s+99%\s+(\S+)"), "non2xx": non2xx}


def counters(pg, db="conduit"):
    """Transactions of database `db`, statements run in it, and the NOTIFYs
    among them (pg_stat_statements is read from conduit's database, where the
    extension is installed; it covers the whole server)."""
    row = pg.sql(f"""SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'),
                            (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d
                               ON d.oid = s.dbid WHERE d.datname = '{db}'),
                            (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d
                               ON d.oid = s.dbid WHERE d.datname = '{db}'
                              AND (query ILIKE '%pg_notify%' OR query ILIKE 'notify %'))""")
    xacts, statements, notifies = (int(float(x)) for x in row.split("|"))
    return xacts, statements, notifies


def statement_calls(pg):
    """Calls and execution time (ms) per statement (pg_stat_statements), keyed by query id."""
    rows = pg.sql("SELECT queryid, calls, total_exec_time, regexp_replace(left(query, 110), '\\s+', ' ', 'g') "
                  "FROM pg_stat_statements")
    calls = {}
    for line in rows.splitlines():
        queryid, count, ms, text = line.split("|", 3)
        calls[queryid] = (int(count), float(ms), text)
    return calls


def quiet(pg, bound):
    """Waits (at most `bound` seconds) until no autovacuum worker runs."""
    deadline = time.time() + bound
    while time.time() < deadline and int(pg.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")) > 0:
        time.sleep(0.5)


def drain(pg, bound):
    """Waits until no job is queued or running (or `bound` seconds); returns
    what is left and the age in seconds of the oldest."""
    deadline = time.time() + bound
    while True:
        row = pg.sql("""SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)
                        FROM jobs WHERE state IN ('queued', 'running')""")
        left, age = row.split("|")
        if int(left) == 0 or time.time() > deadline:
            return int(left), float(age)
        time.sleep(0.2)


def run_scenario(pg, server, name, target, args, duration, connections, top):
    calls0 = statement_calls(pg) if top else {}
    standby = getattr(server, "standby", None)
    r0 = standby.cpu_ticks() if standby else 0
    reads0 = server.metrics("conduit_db_reads_total") if standby else {}
    c0, p0, (x0, s0, n0) = process_ticks(server.process.pid), pg.cpu_ticks(), counters(pg, server.db)
    # The replica's lag as conduit polls it, sampled through the run.
    lags, sampling = [], [True]
    if standby:
        import threading

        def sample_lag():
            while sampling[0]:
                lags.extend(server.metrics("conduit_db_replica_lag_seconds").values())
                time.sleep(0.25)
        sampler = threading.Thread(target=sample_lag, daemon=True)
        sampler.start()
    result = wrk(target, args, duration, connections)
    sampling[0] = False
    # Without workers nothing drains: the queue is only reported. Another
    # implementation has no queue of conduit's kind.
    left, age = drain(pg, 60 if server.workers else 0) if server.db == "conduit" else (0, 0.0)
    c1, p1, (x1, s1, n1) = process_ticks(server.process.pid), pg.cpu_ticks(), counters(pg, server.db)
    requests = max(result["requests"], 1)
    per = lambda ticks: ticks * 1e6 / TICK / requests
    if standby:
        reads1 = server.metrics("conduit_db_reads_total")
        routed = {k: reads1.get(k, 0) - reads0.get(k, 0) for k in reads1}
        total_reads = sum(routed.values())
        result["replica_share"] = routed.get('{reason="replica"}', 0) / total_reads if total_reads else None
        result["replica_us"] = per(standby.cpu_ticks() - r0)
        result["max_lag_ms"] = max(lags) * 1000 if lags else None
    if top:
        calls1 = statement_calls(pg)
        # Nested statements' time is also in their callers' (triggers, foreign-key checks).
        deltas = sorted(((ms - calls0.get(q, (0, 0.0, ""))[1], count - calls0.get(q, (0, 0.0, ""))[0], text)
                         for q, (count, ms, text) in calls1.items()), reverse=True)[:top]
        for ms, delta, text in deltas:
            print(f"    {delta / requests:7.2f}/req {ms * 1000 / requests:7.1f} µs/req  {text}", file=sys.stderr)
    return dict(result, conduit_us=per(c1 - c0), pg_us=per(p1 - p0), xacts=(x1 - x0) / requests,
                statements=(s1 - s0) / requests, notifies=(n1 - n0) / requests, queue_left=left, queue_age=age)


def seed(pg, port, db):
    """The standard dataset through the API (bench/seed.py), plus the fan-out
    author's 100 followers; returns the tokens and slugs the scenarios use."""
    state_path = os.path.join(WORK, f"state-{db}.json")
    log(f"seeding the standard dataset through the API of {db} (bench/seed.py)")
    subprocess.run([sys.executable, os.path.join(ROOT, "bench/seed.py"), str(port), state_path],
                   check=True, stdout=subprocess.DEVNULL, timeout=1800)
    state = json.load(open(state_path))
    # The fan-out author: 100 followers, so each article notifies 100 users.
    import http.client
    api = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for token in state["follower_tokens"]:
        api.request("POST", f"/api/profiles/{state['star']}/follow", headers={"authorization": "Token " + token})
        response = api.getresponse()
        response.read()
        assert response.status == 200, response.status
    if db == "conduit":
        drain(pg, 120)
    pg.sql("VACUUM ANALYZE", db=db)
    pg.sql("CHECKPOINT", db=db)
    return state


def measure(pg, server, config, chosen, state, lua_scripts, options):
    """Each chosen scenario against one running server."""
    url = server.url
    targets = {
        "list-token": (url + "/api/articles", ["-H", "Authorization: Token " + state["reader"]]),
        "feed": (url + "/api/articles/feed", ["-H", "Authorization: Token " + state["reader"]]),
        "article": (url + "/api/articles/" + state["slugs"][0], []),
    }
    for name in ("favorite-mix", "comment", "follow-mix", "create-article", "fan-out-100"):
        targets[name] = (url, ["-s", lua_scripts[name]])
    # Warm-up: the pool, the prepared statements and the pages of every read
    # scenario. The configuration measured first after seeding read up to a
    # quarter slower than the same build measured next, with only a list
    # warmed; background work left by seeding or the previous configuration
    # (autovacuum) is waited for too.
    for name in ("list-token", "feed", "article"):
        if name in chosen:
            wrk(targets[name][0], targets[name][1], 2, options.connections)
    quiet(pg, 60)
    rows = []
    for name in chosen:
        target, args = targets[name]
        log(f"{config}: {name}")
        rows.append((config, name, run_scenario(pg, server, name, target, args, options.duration,
                                                options.connections, options.top)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--configs", default="shipped,bare")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=COMMAND",
                        help="another implementation: a command starting it on {port} with {database_url}")
    parser.add_argument("--pin", metavar="CPUS", help="run each measured server under taskset -c CPUS")
    parser.add_argument("--top", type=int, default=0, metavar="N",
                        help="also print each scenario's N statements with the most execution time, per request")
    parser.add_argument("--baseline", metavar="BIN",
                        help="another conduit binary (a build of main), run as config `baseline` (cache and "
                             "workers off); add `baseline-shipped` to --configs for it with the defaults too")
    options = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    if not os.path.exists(BINARY):
        sys.exit(f"{BINARY} is missing: cargo build --release (or set CONDUIT_BIN)")
    chosen = options.scenarios.split(",")
    if options.pin:
        PIN.extend(["taskset", "-c", options.pin])

    log("starting a private PostgreSQL with pg_stat_statements")
    pg = PrivatePostgres()
    pg.sql("CREATE DATABASE conduit", db="postgres")
    pg.sql("CREATE EXTENSION pg_stat_statements")
    # Seeded by the baseline, when there is one: the database then has its
    # migrations, which this build can extend but it could not undo.
    seeding = Conduit(pg, "shipped", options.baseline)
    state = seed(pg, seeding.port, "conduit")
    seeding.stop()
    lua_scripts = scripts(state)

    rows = []
    configs = options.configs.split(",") + (["baseline"] if options.baseline else [])
    standby = None
    if any(c.endswith("+replica") for c in configs):
        log("starting a streaming replica of it (pg_basebackup -R)")
        standby = Standby(pg)
    if "baseline-shipped" in configs and not options.baseline:
        sys.exit("--configs baseline-shipped needs --baseline BIN")
    # The baseline (an older build) first: it cannot start on a database
    # that this build has migrated further.
    configs.sort(key=lambda c: not c.startswith("baseline"))
    for config in configs:
        # A configuration without workers leaves its jobs queued: they are
        # not the next configuration's work.
        pg.sql("DELETE FROM jobs WHERE state = 'queued'")
        # The previous configuration's writes leave dead rows that autovacuum
        # would clean up during this one's reads, on its account: clean now.
        pg.sql("VACUUM ANALYZE")
        pg.sql("CHECKPOINT")
        conduit = Conduit(pg, config, options.baseline if config.startswith("baseline") else None, standby)
        rows += measure(pg, conduit, config, chosen, state, lua_scripts, options)
        conduit.stop()

    for spec in options.compare:
        label, command = spec.split("=", 1)
        log(f"{label}: starting and seeding it")
        other = Other(pg, label, command)
        other_state = seed(pg, other.port, other.db)
        rows += measure(pg, other, label, chosen, other_state, scripts(other_state, other.db), options)
        other.stop()
    print()
    print(f"wrk -t1 -c{options.connections} -d{options.duration}s; CPU over the load and the job queue's drain; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    header = ("config", "scenario", "req/s", "p50", "p99", "non2xx", "server µs/req", "pg µs/req",
              "xact/req", "stmt/req", "notify/req", "queue left/age s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for config, name, r in rows:
        print(f"| {config} | {name} | {r['rps']:.0f} | {r['p50']} | {r['p99']} | {r['non2xx']} | "
              f"{r['conduit_us']:.0f} | {r['pg_us']:.0f} | {r['xacts']:.2f} | {r['statements']:.2f} | "
              f"{r['notifies']:.2f} | {r['queue_left']}/{r['queue_age']:.1f} |")
    if standby:
        # Where the reads went and what the replica cost, per configuration reading from it.
        print()
        print("| config | scenario | reads on the replica | replica µs/req | pg + replica µs/req | max lag ms |")
        print("|---|---|---|---|---|---|")
        for config, name, r in rows:
            if config.endswith("+replica"):
                share = "–" if r["replica_share"] is None else f"{r['replica_share'] * 100:.0f} %"
                lag = "–" if r["max_lag_ms"] is None else f"{r['max_lag_ms']:.0f}"
                print(f"| {config} | {name} | {share} | {r['replica_us']:.0f} | {r['pg_us'] + r['replica_us']:.0f} | {lag} |")
    if options.compare:
        # Reads against conduit without its response cache (every server does
        # the work), writes against conduit as shipped (jobs, notifications
        # and the cache on).
        rps = {(config, name): r["rps"] for config, name, r in rows}
        print()
        print("| scenario | conduit req/s | " + " | ".join(
            f"{spec.split('=', 1)[0]} req/s | conduit ÷ it" for spec in options.compare) + " |")
        print("|---|---|" + "---|---|" * len(options.compare))
        for name in chosen:
            ours = rps.get(("bare" if name in READS else "shipped", name), 0)
            cells = []
            for spec in options.compare:
                theirs = rps.get((spec.split("=", 1)[0], name), 0)
                cells.append(f"{theirs:.0f} | {ours / theirs:.2f}×" if theirs else "– | –")
            print(f"| {name} | {ours:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
