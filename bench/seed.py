#!/usr/bin/env python3
"""Seeds a benchmark dataset through conduit's public JSON API.

300 users, 5,000 articles (1-4 of 50 tags, 1-2 KB bodies), 10,000 favorites,
2,000 follows (user 0 follows exactly 20 authors), 5,000 comments. Writes
bench/.state.json with the tokens and slugs the load scripts use.
Deterministic (fixed seed); loopback only.
"""
import http.client
import json
import random
import sys
import threading
import time

HOST, PORT = "127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8080
USERS, ARTICLES, FAVORITES, FOLLOWS, COMMENTS, TAGS = 300, 5000, 10000, 2000, 5000, 50
THREADS = 8
rng = random.Random(42)


class Api:
    """One keep-alive connection."""

    def __init__(self):
        self.conn = http.client.HTTPConnection(HOST, PORT, timeout=30)

    def call(self, method, path, token=None, body=None, expect=(200, 201, 204)):
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = "Token " + token
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        if response.status not in expect:
            raise RuntimeError(f"{method} {path} -> {response.status}: {raw[:200]!r}")
        return json.loads(raw) if raw else None


def parallel(jobs, work):
    """Runs work(api, job) over jobs on THREADS connections."""
    lock = threading.Lock()
    results = [None] * len(jobs)
    cursor = [0]
    errors = []

    def worker():
        api = Api()
        while True:
            with lock:
                i = cursor[0]
                cursor[0] += 1
            if i >= len(jobs) or errors:
                return
            try:
                results[i] = work(api, jobs[i])
            except Exception as e:  # stop everything on the first failure
                errors.append(e)
                return

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def main():
    started = time.time()
    stamp = int(started)
    names = [f"bench{stamp}u{i}" for i in range(USERS)]
    tokens = parallel(names, lambda api, n: api.call("POST", "/api/users", body={
        "user": {"username": n, "email": n + "@bench.test", "password": "bench-password"}})["user"]["token"])
    print(f"users: {len(tokens)} in {time.time() - started:.1f}s", flush=True)

    tags = [f"tag{i}" for i in range(TAGS)]
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()

    def article_job(i):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(170, 340)))[: rng.randint(1024, 2048)]
        return (rng.randrange(USERS), {"article": {
            "title": f"Article {i} {rng.choice(words)}", "description": f"About {rng.choice(words)}",
            "body": body, "tagList": rng.sample(tags, rng.randint(1, 4))}})

    jobs = [article_job(i) for i in range(ARTICLES)]
    t = time.time()
    slugs = parallel(jobs, lambda api, j: api.call("POST", "/api/articles", tokens[j[0]], j[1])["article"]["slug"])
    print(f"articles: {len(slugs)} in {time.time() - t:.1f}s", flush=True)

    pairs = set()
    while len(pairs) < FAVORITES:
        pairs.add((rng.randrange(USERS), rng.randrange(ARTICLES)))
    t = time.time()
    parallel(sorted(pairs), lambda api, p: api.call("POST", f"/api/articles/{slugs[p[1]]}/favorite", tokens[p[0]]))
    print(f"favorites: {len(pairs)} in {time.time() - t:.1f}s", flush=True)

    follows = {(0, a) for a in range(1, 21)}  # the feed reader follows exactly 20 authors
    while len(follows) < FOLLOWS:
        a, b = rng.randrange(1, USERS), rng.randrange(USERS)
        if a != b:
            follows.add((a, b))
    t = time.time()
    parallel(sorted(follows), lambda api, f: api.call("POST", f"/api/profiles/{names[f[1]]}/follow", tokens[f[0]]))
    print(f"follows: {len(follows)} in {time.time() - t:.1f}s", flush=True)

    comment_jobs = [(rng.randrange(USERS), rng.randrange(ARTICLES)) for _ in range(COMMENTS)]
    t = time.time()
    parallel(comment_jobs, lambda api, c: api.call("POST", f"/api/articles/{slugs[c[1]]}/comments", tokens[c[0]],
                                                   {"comment": {"body": "A comment " + rng.choice(words)}}))
    print(f"comments: {len(comment_jobs)} in {time.time() - t:.1f}s", flush=True)

    with open(sys.argv[2] if len(sys.argv) > 2 else "bench/.state.json", "w") as f:
        json.dump({"reader": tokens[0], "fan": names[1], "tokens": tokens[:50], "slugs": slugs[:500],
                   "names": names[:50], "star": names[USERS - 1], "star_token": tokens[USERS - 1],
                   "follower_tokens": tokens[100:200]}, f)
    print(f"seeded in {time.time() - started:.1f}s")


if __name__ == "__main__":
    main()
