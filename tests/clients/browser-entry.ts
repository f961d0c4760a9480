// The page's script, bundled by esbuild: calls the API cross-origin three
// ways (fetch + JSON, gRPC-Web, Connect) and leaves what it got in
// window.results for browser.mjs to check; it also shows it on the page.
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { Articles } from "./.gen/es/conduit/v1/articles_pb";
import { Tags } from "./.gen/es/conduit/v1/tags_pb";
import { Users } from "./.gen/es/conduit/v1/users_pb";

type Outcome = { ok: true; value: unknown } | { ok: false; code: string; message: string; connectError: boolean };

const api = new URLSearchParams(location.search).get("api") ?? "";
const results: Record<string, Outcome> = {};
(window as unknown as { results: unknown }).results = { done: false, origin: location.origin, api, calls: results };

const unique = () => `${Date.now() % 1e9}${Math.floor(Math.random() * 1e6)}`;

// Runs one call and records its answer or its error (as a Connect code name).
async function record(name: string, call: () => Promise<unknown>) {
  try {
    results[name] = { ok: true, value: await call() };
  } catch (e) {
    const ce = e instanceof ConnectError;
    results[name] = {
      ok: false,
      code: ce ? Code[e.code] : "not a ConnectError",
      message: e instanceof Error ? e.message : String(e),
      connectError: ce,
    };
  }
  const line = document.createElement("pre");
  line.textContent = `${name}: ${JSON.stringify(results[name])}`;
  document.body.append(line);
}

async function json(path: string, init?: RequestInit) {
  const res = await fetch(api + path, init);
  return { status: res.status, body: await res.json() };
}

// Register, read back with the token, read tags, and fail with NOT_FOUND.
async function rpcs(prefix: string, transport: Transport, username: string) {
  const users = createClient(Users, transport);
  await record(`${prefix}.listTags`, async () => (await createClient(Tags, transport).listTags({})).tags);
  await record(`${prefix}.register`, async () => {
    const { user } = await users.register({ user: { username, email: `${username}@example.com`, password: "secret-password" } });
    const headers = { authorization: `Token ${user?.token}` };
    const me = await users.getCurrentUser({}, { headers });
    return { registered: user?.username, hasToken: !!user?.token, me: me.user?.email };
  });
  await record(`${prefix}.notFound`, () => createClient(Articles, transport).getArticle({ slug: "no-such" }));
}

async function main() {
  await record("fetch.tags", () => json("/api/tags"));
  const name = `web_${unique()}`;
  await record("fetch.register", () =>
    json("/api/users", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user: { username: name, email: `${name}@example.com`, password: "secret-password" } }),
    }),
  );

  for (const binary of [true, false]) {
    const format = binary ? "proto" : "json";
    await rpcs(`grpcweb.${format}`, createGrpcWebTransport({ baseUrl: api, useBinaryFormat: binary }), `gw${format}_${unique()}`);
    await rpcs(`connect.${format}`, createConnectTransport({ baseUrl: api, useBinaryFormat: binary }), `cn${format}_${unique()}`);
  }

  // ListTags and GetArticle have no side effects: with useHttpGet they go as GET.
  const get = createConnectTransport({ baseUrl: api, useHttpGet: true });
  await record("connectGet.listTags", async () => (await createClient(Tags, get).listTags({})).tags);
  await record("connectGet.notFound", () => createClient(Articles, get).getArticle({ slug: "no-such" }));
}

main()
  .catch((e) => {
    results.page = { ok: false, code: "page error", message: String(e), connectError: false };
  })
  .finally(() => {
    (window as unknown as { results: { done: boolean } }).results.done = true;
  });
