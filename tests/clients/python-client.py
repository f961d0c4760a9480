"""A Python gRPC client (grpcio), its stubs generated from proto/ by
grpcio-tools into a temporary directory at test time.

Usage: .venv/bin/python python-client.py http://127.0.0.1:PORT
"""

import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 20  # seconds, per RPC


def ok(msg):
    print(f"ok   python-client: {msg}", flush=True)


def fail(msg):
    print(f"FAIL python-client: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def generate(out):
    """Runs protoc (from grpcio-tools) on every file the conduit.v1 stubs import."""
    wkt = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    files = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto/conduit/v1").glob("*.proto"))
    files += ["google/api/annotations.proto", "google/api/http.proto", "gateway/v1/options.proto", "buf/validate/validate.proto"]
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{ROOT / 'gateway/proto'}",
        f"-I{wkt}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        fail(f"protoc failed: {' '.join(args)}")


def main():
    if len(sys.argv) != 2:
        fail("usage: python-client.py BASE_URL")
    target = sys.argv[1].split("://", 1)[-1].rstrip("/")

    with tempfile.TemporaryDirectory(prefix="conduit-py-") as out:
        generate(out)
        run(target, out)


def run(target, out):
    sys.path.insert(0, out)
    pb = {n: importlib.import_module(f"conduit.v1.{n}_pb2") for n in ("users", "articles", "tags")}
    rpc = {n: importlib.import_module(f"conduit.v1.{n}_pb2_grpc") for n in ("users", "articles", "tags")}
    ok(f"stubs generated from proto/ by grpcio-tools into {out}")

    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        except grpc.FutureTimeoutError:
            fail(f"no gRPC connection to {target} within {TIMEOUT} s")
        users = rpc["users"].UsersStub(channel)
        articles = rpc["articles"].ArticlesStub(channel)
        tags = rpc["tags"].TagsStub(channel)

        name = f"py_{time.time_ns() % 10**12}_{os.getpid()}"
        u = pb["users"]
        reply = users.Register(
            u.RegisterRequest(user=u.NewUser(username=name, email=f"{name}@example.com", password="secret-password")),
            timeout=TIMEOUT,
        )
        check(reply.user.username == name and reply.user.token, f"Register: {reply}")
        auth = [("authorization", f"Token {reply.user.token}")]
        me = users.GetCurrentUser(u.GetCurrentUserRequest(), metadata=auth, timeout=TIMEOUT)
        check(me.user.email == f"{name}@example.com", f"GetCurrentUser: {me}")
        ok(f"registered {name} and read it back with its token")

        a = pb["articles"]
        tag = f"t{name}"  # unique, so listing by it finds only this article
        created = articles.CreateArticle(
            a.CreateArticleRequest(
                article=a.NewArticle(title=f"Hello {name}", description="from Python", body="the body", tag_list=[tag, "python", tag])
            ),
            metadata=auth,
            timeout=TIMEOUT,
        )
        art = created.article
        check(art.slug and list(art.tag_list) == [tag, "python"], f"CreateArticle: {created}")
        check(art.author.username == name and art.created_at.seconds > 0, f"CreateArticle author/date: {created}")

        got = articles.GetArticle(a.GetArticleRequest(slug=art.slug), timeout=TIMEOUT).article
        check(got.title == f"Hello {name}" and got.body == "the body", f"GetArticle: {got}")
        check(list(got.tag_list) == [tag, "python"], f"GetArticle tags: {got}")
        check(not got.favorited, f"GetArticle without token: favorited should be false: {got}")

        listed = articles.ListArticles(a.ListArticlesRequest(tag=tag), timeout=TIMEOUT)
        check(listed.articles_count == 1 and [x.slug for x in listed.articles] == [art.slug], f"ListArticles(tag): {listed}")

        all_tags = tags.ListTags(pb["tags"].ListTagsRequest(), timeout=TIMEOUT).tags
        check(tag in all_tags and "python" in all_tags, f"ListTags: {all_tags}")
        ok("created an article with tags, got it back, listed it by tag, saw its tags in ListTags")

        try:
            articles.GetArticle(a.GetArticleRequest(slug="no-such"), timeout=TIMEOUT)
            fail("GetArticle(no-such) succeeded")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, f"GetArticle(no-such): {e.code()} {e.details()}")
        try:
            users.GetCurrentUser(u.GetCurrentUserRequest(), timeout=TIMEOUT)
            fail("GetCurrentUser without a token succeeded")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNAUTHENTICATED, f"GetCurrentUser(no token): {e.code()} {e.details()}")
        ok("errors arrive as grpc.RpcError: NOT_FOUND, UNAUTHENTICATED")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:  # an RPC that should have succeeded
        fail(f"unexpected RPC error {e.code()}: {e.details()}")
