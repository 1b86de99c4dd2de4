// Cross-origin test in headless Chromium: pages served by a second HTTP server
// (another origin) talk to `komunikator all` through CORS.
//  1. The real socket.io-client@4 with its default transports (HTTP
//     long-polling first, then the upgrade to WebSocket), so the Engine.IO
//     polling requests on /socket.io/ must carry CORS headers; once more with
//     an Authorization header, which makes every polling request preflighted.
//  2. The bundled web client with <meta name="komunikator-server"> pointing at
//     the API: two users chat live.
// usage: KOM_NODE_DIR=DIR node cross_origin.mjs KOMUNIKATOR_BINARY ARTIFACT_DIR
// Needs playwright-core in DIR/node_modules and /usr/bin/chromium (scripts/test.sh
// installs both); installs socket.io-client@4 into DIR if it is missing.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { id, joinListed, openMyRoom, seesMessage, send } from "./ui.mjs";

const DEADLINE_MS = 90000;
const SIO_PAGE_MS = 20000;

const [binary, artifacts] = process.argv.slice(2);
if (!binary || !artifacts) {
  console.error("usage: KOM_NODE_DIR=DIR node cross_origin.mjs KOMUNIKATOR_BINARY ARTIFACT_DIR");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const nodeDir = process.env.KOM_NODE_DIR || process.cwd();
const webDir = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "api", "web");

let passed = 0;
let failedSteps = 0;
const ok = (what) => { passed += 1; console.log(`ok - ${what}`); };
const notOk = (what) => { failedSteps += 1; console.log(`not ok - ${what}`); };

// The page side of the test needs the genuine client, not the app's own.
const sioBundle = join(nodeDir, "node_modules", "socket.io-client", "dist", "socket.io.min.js");
if (!existsSync(sioBundle)) {
  try {
    mkdirSync(nodeDir, { recursive: true });
    if (!existsSync(join(nodeDir, "package.json"))) execFileSync("npm", ["init", "-y"], { cwd: nodeDir, stdio: "ignore" });
    execFileSync("npm", ["install", "--silent", "--no-audit", "--no-fund", "socket.io-client@4"],
      { cwd: nodeDir, stdio: ["ignore", "inherit", "inherit"], timeout: 180000 });
  } catch (e) {
    notOk(`install socket.io-client@4 into ${nodeDir}: ${e.message}`);
    process.exit(1);
  }
}
const sioVersion = JSON.parse(readFileSync(join(nodeDir, "node_modules", "socket.io-client", "package.json"), "utf8")).version;
ok(`socket.io-client ${sioVersion} available`);

// ES modules ignore NODE_PATH: resolve playwright-core from KOM_NODE_DIR.
const require = createRequire(join(nodeDir, "index.js"));
const { chromium } = require("playwright-core");

const dataDir = mkdtempSync(join(tmpdir(), "kom-cross-origin-"));
// Access tokens of 65 s: the web client renews its session (a minute ahead)
// within seconds, so its refresh call crosses origins too (checked below).
const env = { ...process.env, LOG_FORMAT: "json", DATA_DIR: dataDir, JWT_ACCESS_TOKEN_EXPIRES: "65" };
for (const v of ["DATABASE_URL", "DB_HOST", "NATS_URL", "REDIS_URL", "JWT_SECRET_KEY", "LISTEN_ADDR"]) delete env[v];

let server = null;
let pageServer = null;
let browser = null;
function cleanup() {
  server?.kill("SIGTERM");
  pageServer?.close();
  pageServer?.closeAllConnections();
  rmSync(dataDir, { recursive: true, force: true });
}
// Everything below is bounded: a hang anywhere ends the run as a failure.
const deadline = setTimeout(() => {
  notOk(`overall deadline of ${DEADLINE_MS / 1000} s`);
  cleanup();
  console.log(`cross-origin: ${passed} passed, ${failedSteps} failed`);
  process.exit(1);
}, DEADLINE_MS);

// Warnings and errors the server logs are printed at the end: not a failure by
// themselves, but worth seeing next to one.
const serverWarnings = [];
server = spawn(binary, ["all", "--listen", "127.0.0.1:0"], { env, stdio: ["ignore", "pipe", "inherit"] });
let api;
try {
  api = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("server did not start within 20 s")), 20000);
    server.on("exit", (code, signal) => reject(new Error(`server exited (${signal || code})`)));
    createInterface({ input: server.stdout }).on("line", (line) => {
      let entry;
      try { entry = JSON.parse(line); } catch { return; /* not a log line */ }
      if (entry.message === "listening") {
        clearTimeout(timer);
        resolve(`http://${entry.addr}`);
      } else if (entry.level === "WARN" || entry.level === "ERROR") {
        serverWarnings.push(line);
      }
    });
  });
} catch (e) {
  notOk(`start komunikator: ${e.message}`);
  cleanup();
  process.exit(1);
}
ok(`komunikator listening on ${api}`);

// --- the other origin

const sioPage = (userName) => `<!doctype html>
<html><head><meta charset="utf-8"><title>socket.io cross-origin</title>
<script src="/socket.io.min.js"></script></head>
<body><h1>socket.io-client ${sioVersion} to ${api}</h1><pre id="steps"></pre><pre id="result"></pre>
<script>
const API = ${JSON.stringify(api)};
const USER = ${JSON.stringify(userName)};
const steps = window.__steps = [];
const note = (text) => { steps.push(text); document.getElementById("steps").textContent = steps.join("\\n"); };
const finish = (result) => { window.__result = result; document.getElementById("result").textContent = JSON.stringify(result, null, 2); };
const within = (ms, what, promise) => Promise.race([promise, new Promise((_, reject) =>
  setTimeout(() => reject(new Error("timed out waiting for " + what)), ms))]);
const until = (ms, what, pred) => within(ms, what, new Promise((resolve, reject) => {
  const check = () => {
    try { const v = pred(); if (v) resolve(v); else setTimeout(check, 20); } catch (e) { reject(e); }
  };
  check();
}));
async function post(path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const res = await fetch(API + "/api" + path, { method: "POST", headers, body: JSON.stringify(body) });
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new Error("POST /api" + path + ": " + res.status + " " + JSON.stringify(data));
  return data;
}
function connected(socket, what) {
  return within(10000, what, new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    // The first failure is the answer: retrying would only hide it.
    socket.once("connect_error", (e) => reject(new Error(what + ": connect_error: " + e.message
      + (e.description ? " (" + (e.description.message || e.description) + ")" : ""))));
  }));
}
(async () => {
  const sockets = [];
  try {
    await post("/register", { user_name: USER, password: "pw-" + USER });
    note("registered " + USER + " (cross-origin POST /api/register)");
    const { access_token: token } = await post("/login", { user_name: USER, password: "pw-" + USER });
    note("logged in (cross-origin POST /api/login)");

    // Default transports: polling first, then the upgrade to WebSocket.
    const socket = io(API, { auth: { token } });
    sockets.push(socket);
    const engine = socket.io.engine; // created by io() itself, before any I/O
    const initialTransport = engine.transport.name;
    const upgraded = new Promise((resolve) => engine.once("upgrade", (t) => resolve(t.name)));
    const serverErrors = [];
    const messages = [];
    socket.on("error", (e) => serverErrors.push(e));
    socket.on("new_message", (m) => messages.push(m));
    await connected(socket, "connect");
    note("connected (engine started on " + initialTransport + ", now " + engine.transport.name + ")");

    const created = await post("/room/create", { room_name: "xo " + USER, is_private: false, access_key: null }, token);
    const roomId = created.room_id;
    note("created room " + roomId + " (cross-origin POST /api/room/create with Authorization)");

    let joined = null;
    socket.on("user_joined", (p) => { if (p && p.user_name === USER && Number(p.room_id) === roomId) joined = p; });
    socket.emit("join", { room_id: roomId, user_name: USER });
    await until(5000, "user_joined", () => {
      if (serverErrors.length) throw new Error("server error " + JSON.stringify(serverErrors));
      return joined;
    });
    note("joined the room (user_joined received)");

    async function sendAndSee(text) {
      const ack = await within(10000, "ack of message", new Promise((resolve) =>
        socket.emit("message", { room_id: roomId, user_name: USER, message: text }, resolve)));
      if (!ack || typeof ack.chat_id !== "number") throw new Error("bad ack: " + JSON.stringify(ack));
      const live = await until(10000, "new_message " + ack.chat_id, () => messages.find((m) => m.chat_id === ack.chat_id));
      if (live.message !== text || live.user_name !== USER) throw new Error("new_message mismatch: " + JSON.stringify(live));
      return ack.chat_id;
    }
    const firstChatId = await sendAndSee("hello across origins");
    note("message acked with chat_id " + firstChatId + " and new_message received (over " + engine.transport.name + ")");

    if (engine.transport.name !== "websocket") await within(10000, "upgrade to websocket", upgraded);
    const transport = socket.io.engine.transport.name;
    note("transport is " + transport);
    const secondChatId = await sendAndSee("and again after the upgrade");
    note("message acked with chat_id " + secondChatId + " and new_message received over " + transport);

    // A header the browser may not send on its own makes every polling
    // request preflighted (OPTIONS /socket.io/...); this server also takes the
    // token from it.
    const viaHeader = io(API, { forceNew: true, extraHeaders: { Authorization: "Bearer " + token } });
    sockets.push(viaHeader);
    const headerEngine = viaHeader.io.engine;
    const headerInitial = headerEngine.transport.name;
    const headerUpgraded = new Promise((resolve) => headerEngine.once("upgrade", (t) => resolve(t.name)));
    await connected(viaHeader, "connect with Authorization header");
    note("connected with an Authorization header (preflighted polling, started on " + headerInitial + ")");
    // Closed only once upgraded: closing mid-poll would abort a request.
    if (headerEngine.transport.name !== "websocket") await within(10000, "upgrade of the second socket", headerUpgraded);
    viaHeader.close();

    finish({ ok: true, initialTransport, transport, headerInitial, chatIds: [firstChatId, secondChatId], serverErrors, steps });
  } catch (e) {
    sockets.forEach((s) => s.close());
    finish({ ok: false, error: String(e && e.message || e), steps });
  }
})();
</script></body></html>`;

const indexHtml = readFileSync(join(webDir, "index.html"), "utf8");
const metaTag = /<meta name="komunikator-server" content="[^"]*">/;
const files = {
  "/socket.io.min.js": ["text/javascript; charset=utf-8", () => readFileSync(sioBundle)],
  "/": ["text/html; charset=utf-8", () => indexHtml.replace(metaTag, `<meta name="komunikator-server" content="${api}">`)],
  "/app.js": ["text/javascript; charset=utf-8", () => readFileSync(join(webDir, "app.js"))],
  "/style.css": ["text/css; charset=utf-8", () => readFileSync(join(webDir, "style.css"))],
};
pageServer = createServer((req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  const file = files[path];
  if (path === "/sio.html") {
    const user = new URL(req.url, "http://x").searchParams.get("user") || "sio";
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" });
    res.end(sioPage(user));
  } else if (file) {
    res.writeHead(200, { "Content-Type": file[0], "Cache-Control": "no-store" });
    res.end(file[1]());
  } else {
    res.writeHead(path === "/favicon.ico" ? 204 : 404);
    res.end();
  }
});
const web = await new Promise((resolve) => pageServer.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${pageServer.address().port}`)));
if (!metaTag.test(indexHtml)) notOk('api/web/index.html has <meta name="komunikator-server">');
else ok(`pages served from ${web}, another origin than the API`);

// --- the browser

browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let shotNo = 0;
const shot = async (page, name) => page.screenshot({ path: join(artifacts, `xo-${String(++shotNo).padStart(2, "0")}-${name}.png`), fullPage: true });
const run = Math.random().toString(16).slice(2, 8);

// Everything the network layer saw for one page, to check and to explain a failure.
function watch(page, name) {
  const seen = { name, console: [], failed: [], polling: [], apiCalls: [], wrongOrigin: [], sockets: [] };
  page.on("console", (m) => seen.console.push(`[${name}] ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => seen.console.push(`[${name}] page error: ${e.message}`));
  page.on("requestfailed", (r) => seen.failed.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  page.on("response", (r) => {
    const req = r.request();
    const url = req.url();
    if (url.startsWith(`${api}/socket.io/`) && url.includes("transport=polling")) seen.polling.push(`${req.method()} ${r.status()}`);
    if (url.startsWith(`${api}/api/`)) seen.apiCalls.push(`${req.method()} ${r.status()} ${new URL(url).pathname}`);
    if (url.startsWith(`${web}/api/`) || url.startsWith(`${web}/socket.io/`)) seen.wrongOrigin.push(url);
  });
  page.on("websocket", (ws) => seen.sockets.push(ws.url()));
  return seen;
}
const corsErrors = (seen) => seen.console.filter((l) => /CORS|Access-Control/i.test(l));
function explain(seen) {
  for (const l of seen.console) console.log(`#   ${l}`);
  for (const f of seen.failed) console.log(`#   [${seen.name}] request failed: ${f}`);
  for (const u of seen.wrongOrigin) console.log(`#   [${seen.name}] sent to the page's origin, not the API: ${u}`);
}

// Runs one step; a failed step ends the run (later steps depend on it).
class StepFailed extends Error {}
async function step(what, fn, seenList = []) {
  try {
    const detail = await fn();
    ok(detail ? `${what}: ${detail}` : what);
  } catch (e) {
    notOk(`${what}: ${e.message.split("\n")[0]}`);
    seenList.forEach(explain);
    throw new StepFailed(e.message);
  }
}
const check = (cond, message) => { if (!cond) throw new Error(message); };

const watched = [];
try {
  // 1. The real socket.io-client, default transports.
  const sioContext = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  sioContext.setDefaultTimeout(15000);
  const sio = await sioContext.newPage();
  const sioSeen = watch(sio, "sio");
  watched.push(sioSeen);
  await sio.goto(`${web}/sio.html?user=sio_${run}`);
  let result = null;
  try {
    await sio.waitForFunction(() => window.__result, null, { timeout: SIO_PAGE_MS });
    result = await sio.evaluate(() => window.__result);
  } catch { /* reported below with the steps reached */ }
  await shot(sio, "socket-io-client");
  const reached = result ? result.steps : await sio.evaluate(() => window.__steps || []).catch(() => []);
  for (const s of reached) ok(`socket.io page: ${s}`);
  await step("socket.io page finished without error", () => {
    check(result, `no result within ${SIO_PAGE_MS / 1000} s (page still running)`);
    check(result.ok, result.error);
  }, [sioSeen]);
  await step("engine started on HTTP long-polling and upgraded to WebSocket", () => {
    check(result.initialTransport === "polling", `initial transport ${result.initialTransport}`);
    check(result.transport === "websocket", `transport after upgrade ${result.transport}`);
    return `${result.initialTransport} -> ${result.transport}`;
  }, [sioSeen]);
  await step("cross-origin polling requests on /socket.io/ answered 200", () => {
    const methods = new Set(sioSeen.polling.map((p) => p.split(" ")[0]));
    check(methods.has("GET") && methods.has("POST"), `expected polling GET and POST, saw [${sioSeen.polling.join(", ")}]`);
    const bad = sioSeen.polling.filter((p) => !p.endsWith(" 200"));
    check(!bad.length, `non-200 polling answers: ${bad.join(", ")}`);
    return `${sioSeen.polling.length} requests (${[...methods].join(", ")})`;
  }, [sioSeen]);
  await step("socket.io page: no failed request, no CORS error", () => {
    check(!sioSeen.failed.length, `failed requests: ${sioSeen.failed.join("; ")}`);
    const cors = corsErrors(sioSeen);
    check(!cors.length, cors.join("; "));
  }, [sioSeen]);

  // 2. The bundled web client served from the other origin.
  async function user(name) {
    const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
    context.setDefaultTimeout(15000);
    const page = await context.newPage();
    const seen = watch(page, name);
    watched.push(seen);
    await page.goto(web);
    await id(page, "login-user").fill(name);
    await id(page, "login-password").fill(`pw-${name}`);
    await id(page, "register-button").click();
    await id(page, "current-user").filter({ hasText: name }).waitFor();
    // The client's own WebSocket, to the API origin (not to the page's).
    await page.locator("#conn-status.ok").waitFor();
    return { page, seen };
  }

  const alice = `alice_${run}`;
  const bob = `bob_${run}`;
  let a, b;
  await step(`web client: ${alice} registers through the UI and connects`, async () => {
    a = await user(alice);
    const sockets = a.seen.sockets;
    check(sockets.some((u) => u.startsWith(`${api.replace(/^http/, "ws")}/socket.io/`)), `WebSockets opened: [${sockets.join(", ")}]`);
    return `WebSocket ${sockets[0]}`;
  }, watched);
  await shot(a.page, "registered");
  await step("web client: its API link opens the reference on the API origin", async () => {
    const href = await id(a.page, "api-link").getAttribute("href");
    check(href === `${api}/api/docs`, `API link: ${href}`);
  }, watched);
  const lobby = `lobby ${run}`;
  await step(`web client: ${alice} creates public room "${lobby}" and opens it`, async () => {
    await id(a.page, "new-room-name").fill(lobby);
    await id(a.page, "create-room-button").click();
    await openMyRoom(a.page, lobby);
  }, watched);
  await step(`web client: ${bob} registers, sees the room live, joins and opens it`, async () => {
    b = await user(bob);
    await joinListed(b.page, lobby);
  }, watched);
  await step(`web client: ${alice} sends a message, ${bob} sees it live`, async () => {
    await send(a.page, "hello from another origin");
    await seesMessage(a.page, alice, "hello from another origin");
    await seesMessage(b.page, alice, "hello from another origin");
  }, watched);
  await step(`web client: ${bob} replies, ${alice} sees it live`, async () => {
    await send(b.page, "bob here, also from another origin");
    await seesMessage(a.page, bob, "bob here, also from another origin");
  }, watched);
  await shot(a.page, "chat-alice");
  await shot(b.page, "chat-bob");
  await step(`web client: ${alice}'s session renews with its refresh token across origins`, async () => {
    const issued = await a.page.evaluate(() => sessionStorage.getItem("komunikator.access_token"));
    await a.page.waitForFunction(
      (first) => {
        const now = sessionStorage.getItem("komunikator.access_token");
        return now && now !== first;
      },
      issued,
      { timeout: 20000 },
    );
    check(a.seen.apiCalls.some((c) => c.includes("/api/refresh")), "no refresh call reached the API origin");
  }, watched);
  await step("web client: REST calls went to the API origin, none failed, no CORS error", () => {
    const calls = [a.seen, b.seen].flatMap((s) => s.apiCalls);
    const wrong = [a.seen, b.seen].flatMap((s) => s.wrongOrigin);
    const failed = [a.seen, b.seen].flatMap((s) => s.failed);
    const cors = [a.seen, b.seen].flatMap(corsErrors);
    check(calls.length > 0, "no request reached the API origin");
    check(!wrong.length, `requests to the page's origin: ${wrong.join(", ")}`);
    check(!failed.length, `failed requests: ${failed.join("; ")}`);
    check(!cors.length, cors.join("; "));
    const bad = calls.filter((c) => !/^\w+ 2\d\d /.test(c) && !c.includes("/room/join_public"));
    check(!bad.length, `unexpected answers: ${bad.join(", ")}`);
    return `${calls.length} calls`;
  }, watched);
} catch (e) {
  if (!(e instanceof StepFailed)) {
    notOk(`unexpected error: ${e.message.split("\n")[0]}`);
    watched.forEach(explain);
  }
  for (const context of browser.contexts()) {
    for (const page of context.pages()) await shot(page, "failure").catch(() => {});
  }
} finally {
  await browser.close().catch(() => {});
  cleanup();
}
clearTimeout(deadline);
for (const line of serverWarnings) console.log(`# server: ${line}`);
console.log(`# screenshots in ${artifacts}`);
console.log(`cross-origin: ${passed} passed, ${failedSteps} failed`);
process.exit(failedSteps ? 1 : 0);
