// End-to-end test of the web client in headless Chromium: two users in two
// browser contexts against `komunikator all` on the embedded defaults.
// usage: KOM_NODE_DIR=DIR node e2e.mjs KOMUNIKATOR_BINARY ARTIFACT_DIR
// Needs playwright-core installed in DIR/node_modules and /usr/bin/chromium;
// scripts/test.sh installs both.
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { createRequire } from "node:module";
import { id, joinListed, openMyRoom, seesMessage, send } from "./ui.mjs";

// ES modules ignore NODE_PATH: resolve playwright-core from KOM_NODE_DIR.
const require = createRequire(join(process.env.KOM_NODE_DIR || process.cwd(), "index.js"));
const { chromium } = require("playwright-core");

const [binary, artifacts] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const dataDir = mkdtempSync(join(tmpdir(), "kom-browser-"));
// Access tokens of 65 s: the page renews a minute ahead of expiry, so it
// trades its refresh token within seconds of signing in (checked below),
// and every later step runs on renewed tokens.
const env = { ...process.env, LOG_FORMAT: "json", DATA_DIR: dataDir, JWT_ACCESS_TOKEN_EXPIRES: "65" };
for (const v of ["DATABASE_URL", "DB_HOST", "NATS_URL", "REDIS_URL", "JWT_SECRET_KEY", "LISTEN_ADDR"]) delete env[v];

const server = spawn(binary, ["all", "--listen", "127.0.0.1:0"], { env, stdio: ["ignore", "pipe", "inherit"] });
const base = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("server did not start")), 20000);
  createInterface({ input: server.stdout }).on("line", (line) => {
    try {
      const entry = JSON.parse(line);
      if (entry.message === "listening") {
        clearTimeout(timer);
        resolve(`http://${entry.addr}`);
      }
    } catch { /* not a log line */ }
  });
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let step = 0;
const shot = async (page, name) => page.screenshot({ path: join(artifacts, `${String(++step).padStart(2, "0")}-${name}.png`), fullPage: true });
const run = Math.random().toString(16).slice(2, 8);

async function user(name, context = null) {
  context ??= await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error:`, e.message));
  page.sockets = 0; // WebSockets the page opened: 1 while it never reconnects
  page.on("websocket", () => { page.sockets += 1; });
  page.signedInAt = Date.now();
  await page.goto(base);
  await id(page, "login-user").fill(name);
  await id(page, "login-password").fill(`pw-${name}`);
  await id(page, "register-button").click();
  await id(page, "current-user").filter({ hasText: name }).waitFor();
  return page;
}

let failed = null;
try {
  const alice = `alice_${run}`;
  const bob = `bob_${run}`;
  const a = await user(alice);
  const b = await user(bob);
  await shot(a, "registered");

  // The session outlives its access token: the page renews it with its
  // refresh token before it expires.
  const issued = await a.evaluate(() => sessionStorage.getItem("komunikator.access_token"));
  await a.waitForFunction(
    (first) => {
      const now = sessionStorage.getItem("komunikator.access_token");
      return now && now !== first;
    },
    issued,
    { timeout: 20000 },
  );

  // A wrong password is refused with the API's message.
  const c = await (await browser.newContext()).newPage();
  await c.goto(base);
  await id(c, "login-user").fill(alice);
  await id(c, "login-password").fill("wrong");
  await id(c, "login-button").click();
  await id(c, "auth-error").filter({ hasText: "Invalid user credentials" }).waitFor();

  // The topbar's "API" link opens the API reference, served by the binary
  // (Redoc compiled in): it renders the OpenAPI document and its search
  // works (a worker from a blob) under the page's CSP, with no request to
  // another origin. Redoc's footer logo is on a CDN: blocked on purpose.
  const [docs] = await Promise.all([a.context().waitForEvent("page"), id(a, "api-link").click()]);
  const violations = [];
  docs.on("console", (m) => {
    if (m.text().includes("Content Security Policy") && !m.text().includes("https://cdn.redoc.ly/")) violations.push(m.text());
  });
  const docErrors = [];
  docs.on("pageerror", (e) => docErrors.push(e.message));
  const foreign = [];
  docs.on("request", (r) => { if (!r.url().startsWith(base) && !r.url().startsWith("blob:") && !r.url().startsWith("data:")) foreign.push(r.url()); });
  await docs.waitForURL(`${base}/api/docs`);
  await docs.locator("h1", { hasText: "Komunikator REST API" }).waitFor({ timeout: 20000 });
  await docs.locator('input[placeholder="Search..."]').fill("kick");
  await docs.getByText("Remove a member (owner only").first().waitFor({ timeout: 10000 });
  await shot(docs, "api-reference");
  if (violations.length || docErrors.length) throw new Error(`API reference: CSP ${violations}, errors ${docErrors}`);
  if (foreign.some((url) => !url.startsWith("https://cdn.redoc.ly/"))) throw new Error(`API reference fetched ${foreign}`);
  await docs.close();

  // Alice creates a public room; Bob sees it live and joins.
  const lobby = `lobby ${run}`;
  await id(a, "new-room-name").fill(lobby);
  await id(a, "create-room-button").click();
  await openMyRoom(a, lobby);
  await joinListed(b, lobby);

  // Messages flow both ways, live.
  await send(a, "hello from alice");
  await seesMessage(b, alice, "hello from alice");
  await send(b, "hi alice, bob here");
  await seesMessage(a, bob, "hi alice, bob here");
  await seesMessage(a, alice, "hello from alice");

  // Presence: each sees the other online.
  await id(a, "member").and(a.locator(`[data-user="${bob}"][data-online="true"]`)).waitFor({ timeout: 15000 });
  await id(b, "member").and(b.locator(`[data-user="${alice}"][data-online="true"]`)).waitFor({ timeout: 15000 });
  await shot(a, "chat-alice");
  await shot(b, "chat-bob");

  // Catch-up: the connection under Dave's page is cut; Alice sends while
  // it is down; the page rejoins with the newest chat_id it has, and the
  // missed messages appear, once each, without a reload of the history.
  const dave = `dave_${run}`;
  const flaky = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const joins = [];
  let current = null;
  let hold = null;
  await flaky.routeWebSocket(/\/socket\.io\//, async (ws) => {
    if (hold) await hold; // a reconnect waits while the "network" is down
    current = ws;
    const server = ws.connectToServer();
    ws.onMessage((message) => {
      if (String(message).includes('"join"')) joins.push(String(message));
      server.send(message);
    });
  });
  const d = await user(dave, flaky);
  await joinListed(d, lobby);
  await send(a, "before the cut");
  await seesMessage(d, alice, "before the cut");
  let release;
  hold = new Promise((resolve) => { release = resolve; });
  const historyReads = [];
  d.on("request", (r) => { if (r.url().includes("/api/chat_history")) historyReads.push(r.url()); });
  await current.close();
  await d.locator("#conn-status:not(.ok)").waitFor({ timeout: 15000 });
  await send(a, "missed while down 1");
  await send(a, "missed while down 2");
  await seesMessage(a, alice, "missed while down 2");
  hold = null;
  release();
  await d.locator("#conn-status.ok").waitFor({ timeout: 15000 });
  await seesMessage(d, alice, "missed while down 1");
  await seesMessage(d, alice, "missed while down 2");
  const rejoin = joins[joins.length - 1] || "";
  if (!rejoin.includes('"last_chat_id"')) throw new Error(`the page rejoined without last_chat_id: ${joins}`);
  for (const text of ["before the cut", "missed while down 1", "missed while down 2"]) {
    const n = await id(d, "message").filter({ has: id(d, "message-text").filter({ hasText: text }) }).count();
    if (n !== 1) throw new Error(`"${text}" shown ${n} times after the catch-up`);
  }
  if (historyReads.length) throw new Error(`the page reloaded the history: ${historyReads}`);
  await shot(d, "caught-up-after-reconnect");

  // A private room, joined by key.
  const secret = `secret ${run}`;
  await id(a, "new-room-name").fill(secret);
  await id(a, "new-room-private").check();
  await id(a, "new-room-key").fill(`key-${run}`);
  await id(a, "create-room-button").click();
  await openMyRoom(a, secret);
  await id(a, "room-key").filter({ hasText: `key-${run}` }).waitFor();
  await id(b, "join-key").fill(`key-${run}`);
  await id(b, "join-private-button").click();
  await openMyRoom(b, secret);
  await send(b, "in the secret room");
  await seesMessage(a, bob, "in the secret room");
  await shot(a, "private-room");

  // The owner kicks Bob: Bob's view updates at once.
  await id(a, "member").and(a.locator(`[data-user="${bob}"]`)).getByTestId("kick").click();
  await id(b, "app-error").filter({ hasText: "removed" }).waitFor();
  await id(b, "my-room").filter({ hasText: secret }).waitFor({ state: "detached" });
  await id(a, "member").and(a.locator(`[data-user="${bob}"]`)).waitFor({ state: "detached" });
  await shot(b, "kicked");

  // A server that cannot check the token now (the connect error "Service
  // unavailable", during a database outage) keeps the user signed in: the
  // client retries with backoff. Only "Unauthorized" signs the user out.
  // The socket is answered by a stand-in for the first two attempts.
  const carol = `carol_${run}`;
  const degraded = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const attempts = [];
  let refusals = ["Service unavailable", "Service unavailable"];
  let live = null;
  await degraded.routeWebSocket(/\/socket\.io\//, (ws) => {
    attempts.push(Date.now());
    const reason = refusals.shift();
    if (!reason) {
      live = ws;
      ws.connectToServer();
      return;
    }
    ws.onMessage((message) => {
      if (String(message).startsWith("40")) ws.send(`44${JSON.stringify({ message: reason })}`);
    });
    ws.send(`0${JSON.stringify({ sid: `stand-in-${attempts.length}`, upgrades: [], pingInterval: 25000, pingTimeout: 20000, maxPayload: 1000000 })}`);
  });
  const c2 = await user(carol, degraded);
  await c2.locator("#conn-status.ok").waitFor({ timeout: 15000 });
  if (attempts.length !== 3) throw new Error(`expected 2 refused attempts and a third that connects, saw ${attempts.length}`);
  const gaps = attempts.slice(1).map((t, i) => t - attempts[i]);
  if (gaps.some((gap) => gap < 300)) throw new Error(`retried without backoff: ${gaps} ms`);
  if (!(await id(c2, "current-user").isVisible())) throw new Error("signed out by 'Service unavailable'");
  await shot(c2, "reconnected-after-unavailable");
  refusals = ["Unauthorized"];
  await live.close();
  await id(c2, "login-user").waitFor({ state: "visible", timeout: 15000 });
  await shot(c2, "signed-out-after-unauthorized");

  // A socket lives as long as its token unless the client renews it: the
  // page sends every renewed token on its open socket (`refresh`), so
  // Alice's first socket outlives the token it connected with (65 s, and
  // the gateway's one-second sweep) without a reconnect.
  const firstExpiry = a.signedInAt + 65000 + 2000;
  if (Date.now() < firstExpiry) await a.waitForTimeout(firstExpiry - Date.now());
  await send(a, "still on my first socket");
  await seesMessage(a, alice, "still on my first socket");
  if (a.sockets !== 1) throw new Error(`Alice's page opened ${a.sockets} sockets: its socket was closed`);
  await shot(a, "socket-outlived-its-first-token");
} catch (e) {
  failed = e;
  console.error(e);
  for (const context of browser.contexts()) {
    for (const page of context.pages()) await shot(page, "failure").catch(() => {});
  }
} finally {
  await browser.close();
  server.kill("SIGTERM");
  rmSync(dataDir, { recursive: true, force: true });
}
console.log(`screenshots in ${artifacts}`);
console.log(failed ? "browser: 0 passed, 1 failed" : "browser: 1 passed, 0 failed");
process.exit(failed ? 1 : 0);
