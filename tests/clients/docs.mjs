// Loads the service's /docs page (Swagger UI compiled into the binary) in
// headless Chromium with the network limited to the service itself, makes
// real calls from the page's "Try it out" — an anonymous one and, after the
// Authorize dialog takes a token, an authenticated one — and reads the
// answers the page shows.
// Usage: node docs.mjs http://127.0.0.1:PORT
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const chromiumPath = "/usr/bin/chromium";
const ok = (msg) => console.log(`ok   docs: ${msg}`);
function fail(msg) {
  console.error(`FAIL docs: ${msg}`);
  process.exit(1);
}
const api = (process.argv[2] ?? fail("usage: node docs.mjs BASE_URL")).replace(/\/$/, "");
setTimeout(() => fail("timed out after 150 s"), 150_000).unref();
if (!existsSync(chromiumPath)) fail(`${chromiumPath} is missing: run \`bash tests/clients/install.sh\` first`);
if (!existsSync(join(here, "node_modules/playwright-core"))) fail("playwright-core is missing: run install.sh");

// A user and its token, through the JSON API.
const name = `docs${Date.now() % 1e9}`;
const registered = await fetch(`${api}/api/users`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ user: { username: name, email: `${name}@example.com`, password: "docs-password" } }),
}).then((r) => r.json());
const token = registered?.user?.token ?? fail(`registration failed: ${JSON.stringify(registered)}`);

const { chromium } = await import("playwright-core");
const profile = mkdtempSync(join(tmpdir(), "conduit-docs-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: chromiumPath,
  headless: true,
  timeout: 60_000,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
try {
  // Offline but for the service: any other request fails the test.
  const foreign = [];
  await context.route("**/*", (route) => {
    const url = new URL(route.request().url());
    if (url.origin === new URL(api).origin) return route.continue();
    foreign.push(url.href);
    return route.abort();
  });
  const page = context.pages()[0] ?? (await context.newPage());
  await page.goto(`${api}/docs`, { waitUntil: "load" });
  await page.locator(".opblock").first().waitFor({ timeout: 30_000 });
  const operations = await page.locator(".opblock").count();
  if (operations < 19) fail(`only ${operations} operations on the page`);
  ok(`page shows ${operations} operations from /openapi.json`);

  // Try it out: GET /api/tags, anonymous.
  async function tryIt(id) {
    const block = page.locator(`#operations-${id}`);
    await block.locator(".opblock-summary").click();
    await block.locator("button.try-out__btn").click();
    await block.locator("button.execute").click();
    const status = block.locator(".live-responses-table tbody td.response-col_status").first();
    await status.waitFor({ timeout: 20_000 });
    const body = await block.locator(".live-responses-table tbody td.response-col_description pre").first().innerText();
    return { status: (await status.innerText()).trim(), body };
  }
  const tags = await tryIt("Tags-Tags_ListTags");
  if (tags.status !== "200" || !tags.body.includes('"tags"')) fail(`GET /api/tags from the page: ${JSON.stringify(tags)}`);
  ok("Try it out: GET /api/tags answers 200 with tags");

  // Authorize with the Token scheme, then GET /api/user.
  await page.locator("button.authorize").first().click();
  await page.locator(".modal-ux input").first().fill(`Token ${token}`);
  await page.locator(".modal-ux button.authorize").click();
  await page.locator(".modal-ux button.close-modal").click();
  const me = await tryIt("Users-Users_GetCurrentUser");
  if (me.status !== "200" || !me.body.includes(name)) fail(`GET /api/user after Authorize: ${JSON.stringify(me)}`);
  ok("Authorize + Try it out: GET /api/user answers 200 with the user");
  if (foreign.length) fail(`the page asked for other origins: ${foreign.join(", ")}`);
  ok("nothing was loaded from another origin");
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
