// Komunikator benchmark peer: a minimal Socket.IO 4 chat server on Node.js.
//
// What it is
//   The kind of chat backend a Node developer would write with `socket.io` v4
//   (default settings: both transports, the `ws` engine, no compression) and
//   `mysql2`, in one file, speaking the part of Komunikator's wire contract
//   (docs/protocol.md) that the load generator in bench/ uses, so that
//   bench/run.sh can measure Komunikator and this peer side by side on the
//   same machine, database and client. It is a yardstick, not a product.
//
// What it implements (shapes, status codes and error strings as in the contract)
//   GET  /readyz, /healthz                     200 once the database is reachable at boot
//   GET  /metrics                              event counters (see `metrics` below)
//   POST /api/register, /api/login             {user_name, password} -> {access_token}
//   POST /api/room/create                      public or private room, creator = owner + member
//   POST /api/room/join_public                 {room_id}
//   GET  /api/rooms, /api/user_rooms           public rooms; the caller's memberships
//   GET  /api/chat_history?room_id=&before=&limit=   from MariaDB, oldest first
//   GET  /api/users/online                     connected room mates of the caller
//   Socket.IO (namespace /): auth {token} (or Authorization: Bearer, or ?token=),
//     `join`, `leave`, `message` (with ack {chat_id}), `watchdog`, and the events
//     `user_joined`, `user_left`, `new_message`, `user_online`, `user_offline`,
//     `room_list_updated`, `user_list_updated`, `error {message, code}`.
//   Access tokens are HS256 JWTs with Komunikator's claims (sub, iat, nbf, exp,
//   jti, type "access"), signed and checked with node:crypto's HMAC and the
//   shared JWT_SECRET_KEY, so tokens issued by Komunikator or by the generator
//   (for users it writes straight into the database) work here and vice versa.
//   It uses Komunikator's MariaDB schema as is (`komunikator migrate` creates it).
//
// What it does NOT do, compared to Komunikator (read before comparing numbers)
//   - A message is acknowledged and broadcast BEFORE it is durable: rows are
//     queued in memory and written to MariaDB in batches afterwards (every
//     FLUSH_MS or BATCH_MAX rows). A crash loses what was acknowledged but not
//     yet flushed, and GET /api/chat_history does not show a message until its
//     batch is written (no read-your-writes). Komunikator acknowledges only
//     once the message is durable in its broker/store.
//   - One process only: chat_id comes from an in-process counter (started above
//     MAX(message_id) at boot), rooms are Socket.IO's in-memory rooms. No
//     second process may serve the same database; there is no ordering across
//     processes and no horizontal scale (no adapter, no broker).
//   - Presence is "has at least one connected socket": `watchdog` is counted
//     and otherwise ignored, there is no PRESENCE_TIMEOUT, and `user_online` /
//     `user_offline` follow a user's first connect / last disconnect.
//   - No rate limits, no per-socket event queue limit, no login throttling, no
//     limit on unauthenticated connections, no slow-request timeouts beyond
//     Node's defaults, no CORS allowlist (any origin). While the database is
//     down, REST calls answer 503 only once mysql2 gives up (not within the
//     contract's 2 s), and acknowledged messages pile up in memory, unbounded,
//     retried every second.
//   - Passwords are hashed with node's crypto.scrypt (its default cost:
//     N=16384, r=8, p=1), not argon2id; rows holding anything else (argon2id
//     PHC strings written by Komunikator or the generator, legacy plaintext)
//     cannot log in here. Changing a password and token revocation do not exist.
//   - Not implemented: join catch-up (`last_chat_id`), `client_msg_id`
//     idempotency, change_password, get_info, GET /room, join_private, leave,
//     delete, edit, user_list, user_kick (REST).
//
// Configuration (environment)
//   LISTEN_ADDR (host:port, default 127.0.0.1:$PORT), PORT (default 5000),
//   DATABASE_URL (mysql://user[:password]@host:port/db, required),
//   JWT_SECRET_KEY (required), JWT_ACCESS_TOKEN_EXPIRES (seconds, default 900),
//   DB_MAX_CONNECTIONS (default 16, as Komunikator).
//
// Run: node server.mjs (with socket.io and mysql2 installed beside it; see
// bench/cluster.sh, mode `peer`). SIGTERM/SIGINT: close the sockets, write the
// queued messages, exit.

import { createHmac, randomBytes, scrypt, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { promisify } from "node:util";

import mysql from "mysql2/promise";
import { Server } from "socket.io";

const scryptAsync = promisify(scrypt);

// ---- configuration --------------------------------------------------------

const env = process.env;
const LISTEN = env.LISTEN_ADDR || `127.0.0.1:${env.PORT || 5000}`;
const DATABASE_URL = env.DATABASE_URL;
const SECRET = env.JWT_SECRET_KEY;
const TOKEN_TTL = Number(env.JWT_ACCESS_TOKEN_EXPIRES || 900);
const DB_CONNECTIONS = Number(env.DB_MAX_CONNECTIONS || 16);
if (!DATABASE_URL || !SECRET) {
  console.error("DATABASE_URL and JWT_SECRET_KEY are required");
  process.exit(2);
}

/** Batched writes of chat messages: at most this long after the first queued row... */
const FLUSH_MS = 25;
/** ...or at once when this many rows wait (also the most rows per INSERT). */
const BATCH_MAX = 1000;
/** Request bodies beyond this are 413 (as Komunikator). */
const BODY_MAX = 64 * 1024;
/** Contract limits, in characters (Unicode scalar values). */
const LIMITS = { user_name: 48, password: 128, room_name: 64, access_key: 64, message: 1000 };
const HISTORY_MAX = 1000;
const MAX_ID = 2 ** 53 - 1;

// ---- database ---------------------------------------------------------------

const pool = mysql.createPool({
  uri: DATABASE_URL,
  connectionLimit: DB_CONNECTIONS,
  // DATETIME(3) columns come back as text and are stored as UTC text: no
  // time zone conversion anywhere.
  dateStrings: true,
  supportBigNumbers: true,
  charset: "utf8mb4",
});

/** `2026-11-24T19:20:24.123Z` -> `2026-11-24 19:20:24.123` (DATETIME(3), UTC). */
const toSql = (iso) => iso.slice(0, 23).replace("T", " ");
/** The reverse; null stays null. */
const fromSql = (text) => (text ? `${text.replace(" ", "T").padEnd(23, ".000").slice(0, 23)}Z` : null);

// ---- tokens (HS256 JWT with node:crypto) -----------------------------------

const JWT_HEADER = Buffer.from(JSON.stringify({ typ: "JWT", alg: "HS256" })).toString("base64url");
const hmac = (text) => createHmac("sha256", SECRET).update(text).digest();

function issueToken(user) {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    sub: user,
    exp: now + TOKEN_TTL,
    iat: now,
    nbf: now,
    jti: randomBytes(16).toString("hex"),
    type: "access",
  };
  const body = `${JWT_HEADER}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}`;
  return `${body}.${hmac(body).toString("base64url")}`;
}

/** The user a token names, or `{error}` with Komunikator's texts. */
function verifyToken(token) {
  const invalid = { error: "Invalid token" };
  if (typeof token !== "string") return invalid;
  const parts = token.trim().split(".");
  if (parts.length !== 3) return invalid;
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  } catch {
    return invalid;
  }
  // Pinned to HS256: `none`, RS256 and the rest are refused.
  if (header?.alg !== "HS256") return invalid;
  const given = Buffer.from(parts[2], "base64url");
  const expected = hmac(`${parts[0]}.${parts[1]}`);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return invalid;
  const { sub, exp, nbf, iat, type } = claims ?? {};
  if (typeof sub !== "string" || !sub || typeof exp !== "number" || typeof nbf !== "number"
    || typeof iat !== "number" || type !== "access") return invalid;
  const now = Math.floor(Date.now() / 1000);
  if (exp < now) return { error: "Token has expired" };
  if (nbf > now) return invalid;
  return { user: sub };
}

// ---- passwords (node's scrypt, NOT argon2id) --------------------------------

async function hashPassword(password) {
  const salt = randomBytes(16);
  const key = await scryptAsync(password, salt, 32);
  return `scrypt$${salt.toString("base64")}$${key.toString("base64")}`;
}

async function checkPassword(password, stored) {
  const [kind, salt, key] = String(stored).split("$");
  if (kind !== "scrypt" || !salt || !key) return false; // argon2id, plaintext: not supported
  const expected = Buffer.from(key, "base64");
  const got = await scryptAsync(password, Buffer.from(salt, "base64"), expected.length);
  return timingSafeEqual(got, expected);
}

// ---- shared state -------------------------------------------------------------

/** The next chat_id is `++lastChatId` (set above MAX(message_id) at boot). */
let lastChatId = 0;
/** room_id -> {room_id, room_name, room_owner, create_date, is_private}; rooms are never deleted here. */
const rooms = new Map();
/** Token subject -> the user name as stored (the users table's collation ignores case). */
const knownUsers = new Map();
/** user name -> number of connected sockets. */
const online = new Map();
/** Counters for /metrics. */
const counts = { join: 0, leave: 0, message: 0, watchdog: 0, refused: 0, connect_refused: 0, flushed: 0 };
let shuttingDown = false;

const roomKey = (id) => `room:${id}`;

async function room(id) {
  const cached = rooms.get(id);
  if (cached) return cached;
  const [rows] = await pool.query(
    "SELECT room_id, room_name, room_owner, create_date, is_private FROM rooms WHERE room_id = ?", [id]);
  if (!rows.length) return null;
  const r = rows[0];
  const found = { ...r, is_private: Boolean(r.is_private), create_date: fromSql(r.create_date) };
  rooms.set(id, found);
  return found;
}

async function isMember(roomId, user) {
  const [rows] = await pool.query(
    "SELECT 1 FROM users_room WHERE room_id = ? AND user_name = ?", [roomId, user]);
  return rows.length > 0;
}

async function storedUser(name) {
  const known = knownUsers.get(name);
  if (known) return known;
  const [rows] = await pool.query("SELECT user_name FROM users WHERE user_name = ?", [name]);
  if (!rows.length) return null;
  knownUsers.set(name, rows[0].user_name);
  return rows[0].user_name;
}

// ---- batched message writer -----------------------------------------------------

/** Rows acknowledged but not yet written: [message_id, room_id, user_name, message, message_date]. */
let queued = [];
let flushTimer = null;
let flushing = null;

function enqueueRow(row) {
  queued.push(row);
  if (queued.length >= BATCH_MAX) flushSoon(0);
  else flushSoon(FLUSH_MS);
}

function flushSoon(delay) {
  if (flushing) return; // the running flush schedules the next one
  if (delay === 0) {
    clearTimeout(flushTimer);
    flushTimer = null;
    flushing = flushOnce().finally(afterFlush);
  } else if (!flushTimer) {
    flushTimer = setTimeout(() => flushSoon(0), delay);
  }
}

function afterFlush() {
  flushing = null;
  if (shuttingDown) return; // flushAll takes over
  if (queued.length >= BATCH_MAX) flushSoon(0);
  else if (queued.length) flushSoon(FLUSH_MS);
}

/** Writes one batch; on failure puts it back and waits a second. */
async function flushOnce() {
  if (!queued.length) return;
  const batch = queued.length <= BATCH_MAX ? queued : queued.slice(0, BATCH_MAX);
  queued = queued.length <= BATCH_MAX ? [] : queued.slice(BATCH_MAX);
  try {
    // IGNORE: a row whose id is stored already (or whose room is gone) is skipped.
    await pool.query(
      "INSERT IGNORE INTO chat_history (message_id, room_id, user_name, message, message_date) VALUES ?",
      [batch]);
    counts.flushed += batch.length;
  } catch (e) {
    console.error(`writing ${batch.length} messages failed, retrying: ${e.message}`);
    queued = batch.concat(queued);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

/** Writes everything queued (at shutdown), giving up after `ms`. */
async function flushAll(ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    clearTimeout(flushTimer);
    flushTimer = null;
    if (flushing) {
      await flushing;
      continue;
    }
    if (!queued.length) break;
    flushing = flushOnce();
    await flushing;
    flushing = null;
  }
  if (queued.length) console.error(`${queued.length} acknowledged messages were NOT written`);
}

// ---- HTTP / REST -------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message, headers) {
    super(message);
    this.status = status;
    this.headers = headers;
  }
}

const CORS = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Headers": "Authorization, Content-Type",
  "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
};

function send(res, status, body, headers) {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, {
    "Content-Type": typeof body === "string" ? "text/plain; version=0.0.4" : "application/json",
    "Content-Length": Buffer.byteLength(text),
    ...CORS,
    ...headers,
  });
  res.end(text);
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    let failed = false;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > BODY_MAX && !failed) {
        failed = true;
        reject(new HttpError(413, "Request body too large"));
      }
      if (!failed) chunks.push(chunk);
    });
    req.on("end", () => {
      if (failed) return;
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString() || "null");
        resolve(body && typeof body === "object" && !Array.isArray(body) ? body : {});
      } catch {
        reject(new HttpError(400, "Invalid JSON body"));
      }
    });
    req.on("error", reject);
  });
}

function caller(req, required = true) {
  const header = req.headers.authorization;
  if (!header) {
    if (required) throw new HttpError(401, "Missing authorization token");
    return null;
  }
  const token = header.startsWith("Bearer ") || header.startsWith("bearer ") ? header.slice(7) : "";
  const checked = verifyToken(token);
  if (checked.error) throw new HttpError(401, checked.error);
  return checked.user;
}

/** A room id from JSON (integer or numeric string) or a query string; null when absent. */
function parseId(raw, field) {
  if (raw === undefined || raw === null || raw === "") return null;
  let id;
  if (typeof raw === "number") id = raw;
  else if (typeof raw === "string" && /^[0-9]+$/.test(raw)) id = Number(raw);
  else throw new HttpError(400, `${field} must be a positive integer`);
  if (!Number.isSafeInteger(id) || id < 1) throw new HttpError(400, `${field} must be a positive integer`);
  return id;
}

/** Length in Unicode scalar values (a string's `length` counts UTF-16 units, never fewer). */
function chars(s) {
  let n = 0;
  for (const _ of s) n += 1;
  return n;
}

/** A required text field within its limit; `missing` is the contract's 400 text. */
function text(body, field, missing) {
  const v = body[field];
  if (typeof v !== "string" || !v.trim()) throw new HttpError(400, missing);
  if (v.length > LIMITS[field] && chars(v) > LIMITS[field]) throw new HttpError(400, `${field} is longer than ${LIMITS[field]} characters`);
  return v;
}

const routes = {
  "POST /api/register": async (req) => {
    const body = await readJson(req);
    const name = text(body, "user_name", "Missing Login or password");
    const password = text(body, "password", "Missing Login or password");
    if (await storedUser(name)) throw new HttpError(409, "User Exists");
    try {
      await pool.query("INSERT INTO users (user_name, password) VALUES (?, ?)", [name, await hashPassword(password)]);
    } catch (e) {
      if (e.code === "ER_DUP_ENTRY") throw new HttpError(409, "User Exists");
      throw e;
    }
    knownUsers.set(name, name);
    return [201, { access_token: issueToken(name) }];
  },

  "POST /api/login": async (req) => {
    const body = await readJson(req);
    const name = text(body, "user_name", "Missing Login or password");
    const password = text(body, "password", "Missing Login or password");
    const [rows] = await pool.query("SELECT user_name, password FROM users WHERE user_name = ?", [name]);
    if (!rows.length || !(await checkPassword(password, rows[0].password))) {
      throw new HttpError(401, "Invalid user credentials");
    }
    return [200, { access_token: issueToken(rows[0].user_name) }];
  },

  "POST /api/room/create": async (req) => {
    const owner = caller(req);
    const body = await readJson(req);
    const name = text(body, "room_name", "Missing room_name or room_owner parameter");
    if (body.is_private !== undefined && body.is_private !== null && typeof body.is_private !== "boolean"
      && body.is_private !== 0 && body.is_private !== 1) {
      throw new HttpError(400, "is_private must be true or false");
    }
    const isPrivate = body.is_private === true || body.is_private === 1;
    const key = isPrivate ? text(body, "access_key", "Missing access_key parameter") : null;
    const created = new Date().toISOString();
    const conn = await pool.getConnection();
    let roomId;
    try {
      await conn.beginTransaction();
      const [done] = await conn.query(
        "INSERT INTO rooms (room_name, room_owner, create_date, is_private, access_key) VALUES (?, ?, ?, ?, ?)",
        [name, owner, toSql(created), isPrivate ? 1 : 0, key]);
      roomId = done.insertId;
      await conn.query("INSERT INTO users_room (room_id, user_name) VALUES (?, ?)", [roomId, owner]);
      await conn.commit();
    } catch (e) {
      await conn.rollback().catch(() => {});
      if (e.code === "ER_DUP_ENTRY") throw new HttpError(400, "Room with this access key already exists");
      if (e.code === "ER_NO_REFERENCED_ROW_2") throw new HttpError(401, "Invalid token");
      throw e;
    } finally {
      conn.release();
    }
    rooms.set(roomId, { room_id: roomId, room_name: name, room_owner: owner, create_date: created, is_private: isPrivate });
    io.emit("room_list_updated");
    return [200, { message: "Room created successfully", room_id: roomId }];
  },

  "POST /api/room/join_public": async (req) => {
    const user = caller(req);
    const body = await readJson(req);
    const id = parseId(body.room_id, "room_id");
    if (id === null) throw new HttpError(400, "Missing room_id parameter");
    const r = await room(id);
    if (!r || r.is_private) throw new HttpError(404, "Room not found");
    try {
      await pool.query("INSERT INTO users_room (room_id, user_name) VALUES (?, ?)", [id, user]);
    } catch (e) {
      if (e.code === "ER_DUP_ENTRY") throw new HttpError(400, "User already in room");
      throw e;
    }
    io.to(roomKey(id)).emit("user_list_updated");
    return [200, { message: "Joined room successfully" }];
  },

  "GET /api/rooms": async () => {
    const [rows] = await pool.query(
      "SELECT room_id, room_name, room_owner, create_date FROM rooms WHERE is_private = 0 ORDER BY room_id");
    return [200, rows.map((r) => ({ ...r, create_date: fromSql(r.create_date), is_private: false, access_key: null }))];
  },

  "GET /api/user_rooms": async (req) => {
    const user = caller(req);
    const [rows] = await pool.query(
      "SELECT m.user_name, r.room_id, r.room_name, r.room_owner, r.is_private FROM users_room m "
      + "JOIN rooms r ON r.room_id = m.room_id WHERE m.user_name = ? ORDER BY r.room_id", [user]);
    return [200, rows.map((r) => ({ ...r, is_private: Boolean(r.is_private) }))];
  },

  "GET /api/chat_history": async (req, query) => {
    const viewer = caller(req, false);
    const id = parseId(query.get("room_id"), "room_id");
    if (id === null) throw new HttpError(400, "Missing room_id parameter");
    const before = parseId(query.get("before"), "before");
    let limit = HISTORY_MAX;
    const rawLimit = query.get("limit");
    if (rawLimit !== null && rawLimit !== "") {
      limit = /^[0-9]+$/.test(rawLimit) ? Number(rawLimit) : 0;
      if (limit < 1 || limit > HISTORY_MAX) throw new HttpError(400, `limit must be an integer from 1 to ${HISTORY_MAX}`);
    }
    const r = await room(id);
    if (!r || (r.is_private && !(viewer && (viewer === r.room_owner || (await isMember(id, viewer)))))) {
      throw new HttpError(404, "Room not found");
    }
    const [rows] = await pool.query(
      "SELECT message_id AS chat_id, room_id, user_name, message, message_date AS create_date "
      + "FROM chat_history WHERE room_id = ? AND message_id < ? ORDER BY message_id DESC LIMIT ?",
      [id, before ?? Number.MAX_SAFE_INTEGER, limit]);
    rows.reverse();
    for (const m of rows) m.create_date = fromSql(m.create_date);
    return [200, rows];
  },

  "GET /api/users/online": async (req) => {
    const user = caller(req);
    const [rows] = await pool.query(
      "SELECT DISTINCT other.user_name FROM users_room me JOIN users_room other ON other.room_id = me.room_id "
      + "WHERE me.user_name = ? AND other.user_name <> ?", [user, user]);
    return [200, rows.map((r) => r.user_name).filter((name) => online.has(name)).sort()];
  },
};

const READY = () => [200, { status: "ok" }];
routes["GET /readyz"] = READY;
routes["GET /healthz"] = READY;
routes["GET /metrics"] = () => {
  // The series name is Komunikator's gateway counter, so that the generator's
  // `idle` scenario reads the heartbeats this process handled the same way.
  const lines = ["# TYPE komunikator_gateway_events_total counter"];
  for (const e of ["join", "leave", "message", "watchdog"]) {
    lines.push(`komunikator_gateway_events_total{event="${e}"} ${counts[e]}`);
  }
  lines.push(`peer_events_refused_total ${counts.refused}`, `peer_connects_refused_total ${counts.connect_refused}`,
    `peer_messages_written_total ${counts.flushed}`, `peer_messages_queued ${queued.length}`,
    `peer_sockets ${io.engine.clientsCount}`, "");
  return [200, lines.join("\n")];
};

async function handle(req, res) {
  const url = new URL(req.url, "http://peer");
  if (req.method === "OPTIONS") {
    res.writeHead(204, { ...CORS, "Access-Control-Max-Age": "600" });
    res.end();
    return;
  }
  const route = routes[`${req.method} ${url.pathname}`];
  try {
    if (!route) {
      const known = Object.keys(routes).some((k) => k.endsWith(` ${url.pathname}`));
      throw new HttpError(known ? 405 : 404, known ? "Method not allowed" : "Not found");
    }
    const [status, body] = await route(req, url.searchParams);
    send(res, status, body);
  } catch (e) {
    if (e instanceof HttpError) {
      send(res, e.status, { error: e.message }, e.headers);
      if (e.status === 413) req.resume();
    } else {
      console.error(`${req.method} ${url.pathname}: ${e.stack || e}`);
      send(res, 503, { error: "Service unavailable, try again" }, { "Retry-After": "1" });
    }
  }
}

// ---- Socket.IO ------------------------------------------------------------------

const httpServer = createServer(handle);
const io = new Server(httpServer, {
  // Defaults otherwise: transports ["polling", "websocket"], the `ws` engine,
  // no per-message deflate, 25 s pings.
  cors: { origin: "*", allowedHeaders: ["Authorization", "Content-Type"] },
});

const REFUSALS = {
  1: "Message is too long",
  2: "Missing message",
  3: "Missing user_name or room_id",
  4: "Join failed",
  5: "Forbidden",
  7: "Invalid payload",
  8: "Service unavailable, try again",
};
const MISSING_USER_NAME = { message: "Missing user_name", code: 3 };

class Refusal extends Error {
  constructor(code, message = REFUSALS[code]) {
    super(message);
    this.code = code;
  }
}

function refuse(socket, ack, e) {
  counts.refused += 1;
  const body = e instanceof Refusal ? { message: e.message, code: e.code } : { message: REFUSALS[8], code: 8 };
  if (!(e instanceof Refusal)) console.error(`socket event failed: ${e.stack || e}`);
  socket.emit("error", body);
  if (typeof ack === "function") ack({ error: body.message, code: body.code });
}

/** The payload as an object, the room id and the sender's name checked (codes 7, 3, 4, 5). */
function roomRequest(socket, data) {
  if (!data || typeof data !== "object" || Array.isArray(data)) throw new Refusal(7);
  const raw = data.room_id;
  let id;
  if (raw === undefined || raw === null || raw === "") throw new Refusal(3);
  if (typeof raw === "number" && Number.isInteger(raw)) id = raw;
  else if (typeof raw === "string" && /^[0-9]+$/.test(raw)) id = Number(raw);
  else throw new Refusal(7);
  if (!(id >= 1 && id <= MAX_ID)) throw new Refusal(4);
  checkName(socket, data.user_name);
  return id;
}

function checkName(socket, name) {
  if (name === undefined || name === null || name === "") return;
  if (typeof name !== "string") throw new Refusal(7);
  if (name !== socket.data.user) throw new Refusal(5);
}

/** Tells every room the user is a member of that they came online / went offline. */
async function announce(user, event) {
  if (shuttingDown) return;
  try {
    const [rows] = await pool.query("SELECT room_id FROM users_room WHERE user_name = ?", [user]);
    if (rows.length) io.to(rows.map((r) => roomKey(r.room_id))).emit(event, { user_name: user });
  } catch (e) {
    console.error(`${event} of ${user} not announced: ${e.message}`);
  }
}

// Authentication: a valid token naming a stored user, else a connect error.
io.use(async (socket, next) => {
  const { auth, headers, query } = socket.handshake;
  const bearer = headers.authorization?.startsWith("Bearer ") ? headers.authorization.slice(7) : undefined;
  const checked = verifyToken(auth?.token ?? bearer ?? query.token);
  if (checked.error) {
    counts.connect_refused += 1;
    return next(new Error("Unauthorized"));
  }
  try {
    const user = await storedUser(checked.user);
    if (!user) {
      counts.connect_refused += 1;
      return next(new Error("Unauthorized"));
    }
    socket.data.user = user;
    return next();
  } catch (e) {
    console.error(`cannot check the user of a socket: ${e.message}`);
    counts.connect_refused += 1;
    return next(new Error("Service unavailable"));
  }
});

io.on("connection", (socket) => {
  const user = socket.data.user;
  const sockets = (online.get(user) ?? 0) + 1;
  online.set(user, sockets);
  if (sockets === 1) announce(user, "user_online");
  socket.on("disconnect", () => {
    const left = online.get(user) - 1;
    if (left > 0) online.set(user, left);
    else {
      online.delete(user);
      announce(user, "user_offline");
    }
  });

  // A join needs the database; the socket's later events wait for it (in
  // order), so a `message` right after its `join` is not refused as "not
  // joined". Without a pending join, events are handled at once.
  let pending = null;
  const inOrder = (work) => {
    const p = (pending ?? Promise.resolve()).then(work);
    pending = p;
    p.finally(() => { if (pending === p) pending = null; });
  };

  socket.on("join", (data, ack) => {
    counts.join += 1;
    inOrder(async () => {
      try {
        const id = roomRequest(socket, data);
        const r = await room(id);
        if (!r) throw new Refusal(4);
        if (r.is_private && r.room_owner !== user && !(await isMember(id, user))) throw new Refusal(4);
        socket.join(roomKey(id));
        io.to(roomKey(id)).emit("user_joined", { user_name: user, room_id: id });
        if (typeof ack === "function") ack({ room_id: id, replayed: 0, complete: true });
      } catch (e) {
        refuse(socket, ack, e);
      }
    });
  });

  socket.on("leave", (data, ack) => {
    counts.leave += 1;
    const work = () => {
      try {
        const id = roomRequest(socket, data);
        const key = roomKey(id);
        if (socket.rooms.has(key)) {
          socket.leave(key);
          io.to(key).emit("user_left", { user_name: user, room_id: id });
        }
      } catch (e) {
        refuse(socket, ack, e);
      }
    };
    if (pending) inOrder(work); else work();
  });

  socket.on("message", (data, ack) => {
    counts.message += 1;
    const work = () => {
      try {
        const id = roomRequest(socket, data);
        const message = data.message;
        if (message === undefined || message === null) throw new Refusal(2);
        if (typeof message !== "string") throw new Refusal(7);
        if (!/\S/.test(message)) throw new Refusal(2);
        if (message.length > LIMITS.message && chars(message) > LIMITS.message) throw new Refusal(1);
        const key = roomKey(id);
        if (!socket.rooms.has(key)) throw new Refusal(4);
        const chatId = ++lastChatId;
        const createDate = new Date().toISOString();
        io.to(key).emit("new_message", {
          chat_id: chatId, room_id: id, user_name: user, message, create_date: createDate,
        });
        if (typeof ack === "function") ack({ chat_id: chatId });
        enqueueRow([chatId, id, user, message, toSql(createDate)]);
      } catch (e) {
        refuse(socket, ack, e);
      }
    };
    if (pending) inOrder(work); else work();
  });

  socket.on("watchdog", (data, ack) => {
    counts.watchdog += 1;
    try {
      if (!data || typeof data !== "object" || Array.isArray(data)) throw new Refusal(7);
      if (data.user_name === undefined || data.user_name === null || data.user_name === "") {
        throw new Refusal(MISSING_USER_NAME.code, MISSING_USER_NAME.message);
      }
      checkName(socket, data.user_name);
      // Presence here is "has a connected socket": nothing else to do.
    } catch (e) {
      refuse(socket, ack, e);
    }
  });
});

// ---- boot and shutdown ---------------------------------------------------------------

async function boot() {
  for (let attempt = 1; ; attempt += 1) {
    try {
      const [[{ max }]] = await pool.query("SELECT COALESCE(MAX(message_id), 0) AS max FROM chat_history");
      lastChatId = Number(max);
      break;
    } catch (e) {
      if (attempt >= 30) throw e;
      console.error(`database not ready (${e.message}), retrying`);
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
  const at = LISTEN.lastIndexOf(":");
  httpServer.listen(Number(LISTEN.slice(at + 1)), LISTEN.slice(0, at).replace(/^\[|\]$/g, ""), () => {
    console.log(`peer listening on ${LISTEN}, next chat_id ${lastChatId + 1}`);
  });
}

async function shutdown(signal) {
  if (shuttingDown) return;
  shuttingDown = true;
  console.log(`${signal}: closing sockets, writing ${queued.length} queued messages`);
  // Closes every socket and the HTTP server; no new message can arrive after this.
  io.close();
  await flushAll(4000);
  await pool.end().catch(() => {});
  process.exit(0);
}

process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));

boot().catch((e) => {
  console.error(`cannot start: ${e.stack || e}`);
  process.exit(1);
});
