// Komunikator web client: plain JavaScript, no build step, no dependencies.
// It speaks the public REST API under /api and Socket.IO v5 (Engine.IO v4)
// over a bare WebSocket on /socket.io/.

// Where the API lives. Empty: the origin that served this page (the server's
// own copy of the client). A copy hosted elsewhere sets
// <meta name="komunikator-server" content="https://chat.example.com"> in
// index.html, and the server's CORS allowlist must admit the page's origin.
// Only the page itself can set it: a query-string override would let a
// crafted link send the user's password to another server.
const SERVER = (document.querySelector('meta[name="komunikator-server"]')?.content || '')
  .trim().replace(/\/+$/, '');

const TOKEN_KEY = 'komunikator.access_token';
// The session's refresh token: traded for a fresh access token shortly
// before the current one expires, so an active user stays signed in.
const REFRESH_KEY = 'komunikator.refresh_token';
const RENEW_BEFORE_MS = 60 * 1000;
const WATCHDOG_MS = 1000;
const ONLINE_REFRESH_MS = 3000;
const ACK_TIMEOUT_MS = 10000;
const JOIN_WAIT_MS = 5000;

// ---------------------------------------------------------------------------
// Small DOM helpers (user text only ever goes through textContent)

const $ = (id) => document.getElementById(id);

function el(tag, opts = {}, ...children) {
  const node = document.createElement(tag);
  if (opts.className) node.className = opts.className;
  if (opts.text !== undefined) node.textContent = String(opts.text);
  if (opts.testid) node.dataset.testid = opts.testid;
  for (const [k, v] of Object.entries(opts.data || {})) node.dataset[k] = String(v);
  for (const [k, v] of Object.entries(opts.attrs || {})) node.setAttribute(k, String(v));
  if (opts.title) node.title = opts.title;
  if (opts.onClick) node.addEventListener('click', opts.onClick);
  for (const child of children) if (child) node.append(child);
  return node;
}

function formatTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' });
}

// ---------------------------------------------------------------------------
// JWT (decoded client-side only to read `sub` and `exp`; never verified here)

function decodeJwt(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    if (typeof claims.sub !== 'string' || typeof claims.exp !== 'number') return null;
    return claims;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------
// Minimal Socket.IO v5 / Engine.IO v4 client over WebSocket

class SocketClient {
  constructor(token, handlers) {
    this.token = token;
    this.handlers = handlers; // { onConnect, onDisconnect, onRefused, onEvent(name, payload) }
    this.ws = null;
    this.connected = false;
    this.stopped = false;
    this.attempt = 0;
    this.nextAckId = 0;
    this.acks = new Map(); // id -> { resolve, reject, timer }
    this.pingTimer = null;
    this.retryTimer = null;
    this.pingWindow = 45000;
    this.waitFor = null; // a token renewal the next connect waits for
  }

  static url() {
    const path = '/socket.io/?EIO=4&transport=websocket';
    if (SERVER) {
      // Same host, port and path prefix as the REST calls; http -> ws, https -> wss.
      const url = new URL(`${SERVER}${path}`, location.href);
      url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
      return url.href;
    }
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${proto}//${location.host}${path}`;
  }

  open() {
    if (this.stopped) return;
    if (this.waitFor) {
      // The server closed the socket for its token: connect again with the
      // renewed one, not the one it refused.
      const renewal = this.waitFor;
      this.waitFor = null;
      renewal.finally(() => this.open());
      return;
    }
    let ws;
    try {
      ws = new WebSocket(SocketClient.url());
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onmessage = (e) => {
      if (this.ws === ws && typeof e.data === 'string') this.onPacket(e.data);
    };
    ws.onclose = () => {
      if (this.ws === ws) this.onClose();
    };
    ws.onerror = () => {}; // a close event always follows
  }

  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    if (ws) {
      if (this.connected) this.raw('41');
      this.ws = null;
      ws.close();
      this.onClose();
    }
  }

  raw(packet) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(packet);
  }

  // Engine.IO layer: 0 open, 1 close, 2 ping, 3 pong, 4 message.
  onPacket(data) {
    switch (data[0]) {
      case '0': {
        let open = {};
        try { open = JSON.parse(data.slice(1)); } catch { /* keep defaults */ }
        this.pingWindow = (open.pingInterval || 25000) + (open.pingTimeout || 20000);
        this.armPingTimer();
        // Presence in batches: one event per room every 250 ms at most,
        // in rooms of any size (docs/protocol.md, "Presence").
        this.raw('40' + JSON.stringify({ token: this.token, presence: 'batched' }));
        break;
      }
      case '2':
        this.armPingTimer();
        this.raw('3' + data.slice(1));
        break;
      case '1':
        this.dropConnection();
        break;
      case '4':
        this.onSocketIoPacket(data.slice(1));
        break;
      default:
        break;
    }
  }

  // Socket.IO layer: 0 connect, 1 disconnect, 2 event, 3 ack, 4 connect error.
  onSocketIoPacket(packet) {
    const type = packet[0];
    let rest = packet.slice(1);
    if (rest.startsWith('/')) {
      const comma = rest.indexOf(',');
      const nsp = comma < 0 ? rest : rest.slice(0, comma);
      if (nsp !== '/') return; // only the default namespace is used
      rest = comma < 0 ? '' : rest.slice(comma + 1);
    }
    const match = /^(\d*)([\s\S]*)$/.exec(rest);
    const id = match[1];
    let body;
    if (match[2]) {
      try { body = JSON.parse(match[2]); } catch { return; }
    }
    switch (type) {
      case '0':
        this.connected = true;
        this.attempt = 0;
        this.handlers.onConnect();
        break;
      case '4': {
        // Only a refused token ends the session; a server that cannot check
        // it now ("Service unavailable") is tried again, with backoff.
        const reason = (body && body.message) || 'Unauthorized';
        if (reason === 'Service unavailable') {
          this.dropConnection();
          break;
        }
        this.stopped = true;
        this.dropConnection();
        this.handlers.onRefused(reason);
        break;
      }
      case '1':
        this.dropConnection();
        break;
      case '2':
        if (Array.isArray(body) && typeof body[0] === 'string') this.handlers.onEvent(body[0], body[1]);
        break;
      case '3': {
        const pending = this.acks.get(Number(id));
        if (pending) {
          this.acks.delete(Number(id));
          clearTimeout(pending.timer);
          pending.resolve(Array.isArray(body) ? body[0] : undefined);
        }
        break;
      }
      default:
        break;
    }
  }

  armPingTimer() {
    clearTimeout(this.pingTimer);
    this.pingTimer = setTimeout(() => this.dropConnection(), this.pingWindow);
  }

  dropConnection() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.close();
    this.onClose();
  }

  onClose() {
    const wasConnected = this.connected;
    this.connected = false;
    clearTimeout(this.pingTimer);
    for (const pending of this.acks.values()) {
      clearTimeout(pending.timer);
      pending.reject(new Error('Connection lost; the message may not have been sent'));
    }
    this.acks.clear();
    if (wasConnected) this.handlers.onDisconnect();
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    const base = Math.min(10000, 500 * 2 ** this.attempt);
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.open(), base * (0.75 + Math.random() * 0.5));
  }

  emit(event, payload) {
    if (!this.connected) return false;
    this.raw('42' + JSON.stringify(payload === undefined ? [event] : [event, payload]));
    return true;
  }

  emitWithAck(event, payload, timeoutMs = ACK_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      if (!this.connected) {
        reject(new Error('Not connected to the server'));
        return;
      }
      const id = this.nextAckId++;
      const timer = setTimeout(() => {
        this.acks.delete(id);
        reject(new Error('No answer from the server'));
      }, timeoutMs);
      this.acks.set(id, { resolve, reject, timer });
      this.raw('42' + id + JSON.stringify([event, payload]));
    });
  }
}

// ---------------------------------------------------------------------------
// REST API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body, { auth = true } = {}) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const token = state.token;
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(`${SERVER}/api${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'Cannot reach the server');
  }
  let data = null;
  try { data = await res.json(); } catch { /* empty or not JSON */ }
  if (!res.ok) {
    const message = (data && typeof data.error === 'string' && data.error) || `Request failed (${res.status})`;
    if (res.status === 401 && auth && token && token === state.token) {
      // The access token was refused (expired, or revoked by a password
      // change elsewhere): one try with the session's refresh token.
      if (await renewSession()) return api(method, path, body, { auth });
      logout('Your session has expired. Please log in again.');
    }
    throw new ApiError(res.status, message);
  }
  return data;
}

// ---------------------------------------------------------------------------
// Application state

const state = {
  token: null,
  refresh: null,
  renewing: null,
  user: null,
  exp: 0,
  socket: null,
  timers: [],
  publicRooms: [],
  myRooms: [],
  room: null, // the open room object (GET /api/room)
  roomSeq: 0, // bumps whenever the open room changes, to drop stale answers
  messages: [], // sorted by chat_id
  messageIds: new Set(),
  members: [],
  wasMember: false,
  online: new Set(),
  joined: false,
  joinWaiters: [],
  leavingRoom: null, // room we are leaving or deleting ourselves
  renderedLists: '',
  renderedMembers: '',
};

const isOwner = () => !!state.room && state.room.room_owner === state.user;
const sameRoom = (id) => !!state.room && Number(id) === state.room.room_id;

// ---------------------------------------------------------------------------
// Notices and errors

function showError(text) {
  if (!state.token) return;
  $('app-error').textContent = text;
  $('app-error-bar').hidden = false;
}

function clearError() {
  $('app-error').textContent = '';
  $('app-error-bar').hidden = true;
}

function showActivity(text) {
  const box = $('room-activity');
  const line = el('div', { text });
  box.append(line);
  while (box.childElementCount > 3) box.firstElementChild.remove();
  setTimeout(() => line.remove(), 8000);
}

// Runs a user action: clears the previous error, shows the new one if any.
function action(fn) {
  return async (event) => {
    if (event) event.preventDefault();
    clearError();
    try {
      await fn(event);
    } catch (e) {
      showError(e.message || String(e));
    }
  };
}

// Background refreshes stay quiet: their errors are not the user's doing.
function quietly(promise) {
  promise.catch((e) => console.debug('background refresh failed:', e.message));
}

// ---------------------------------------------------------------------------
// Session: login, register, logout, expiry

async function authenticate(kind) {
  const errorBox = $('auth-error');
  errorBox.textContent = '';
  const body = { user_name: $('login-user').value.trim(), password: $('login-password').value };
  try {
    const data = await api('POST', kind === 'register' ? '/register' : '/login', body, { auth: false });
    startSession(data.access_token, data.refresh_token);
  } catch (e) {
    errorBox.textContent = e.message;
  }
}

async function startSession(token, refreshToken) {
  if (refreshToken) sessionStorage.setItem(REFRESH_KEY, refreshToken);
  state.refresh = sessionStorage.getItem(REFRESH_KEY);
  let claims = token ? decodeJwt(token) : null;
  if (!claims) {
    showAuth('The server sent an unreadable token');
    return;
  }
  if (claims.exp * 1000 <= Date.now()) {
    // A reloaded page whose access token ran out: the session may live on.
    const renewed = state.refresh ? await refreshTokens(state.refresh) : null;
    claims = renewed && decodeJwt(renewed.access_token);
    if (!claims) {
      sessionStorage.removeItem(TOKEN_KEY);
      sessionStorage.removeItem(REFRESH_KEY);
      showAuth('Your session has expired. Please log in again.');
      return;
    }
    token = renewed.access_token;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  Object.assign(state, { token, user: claims.sub, exp: claims.exp });
  $('current-user').textContent = claims.sub;
  $('login-password').value = '';
  $('auth-error').textContent = '';
  $('auth-screen').hidden = true;
  $('app-screen').hidden = false;
  clearError();
  renderRoom();

  state.socket = new SocketClient(token, {
    onConnect: onSocketConnect,
    onDisconnect: () => { state.joined = false; renderConnection(); renderMembers(); },
    onRefused: () => logout('Your session has expired. Please log in again.'),
    onEvent: onSocketEvent,
  });
  state.socket.open();
  renderConnection();

  state.timers.push(setInterval(tick, WATCHDOG_MS));
  state.timers.push(setInterval(() => quietly(refreshOnline()), ONLINE_REFRESH_MS));
  quietly(refreshLists());
  quietly(refreshOnline());
}

function tick() {
  if (!state.token) return;
  if (state.refresh && state.exp * 1000 - Date.now() <= RENEW_BEFORE_MS) {
    quietly(renewSession());
  } else if (state.exp * 1000 <= Date.now()) {
    logout('Your session has expired. Please log in again.');
    return;
  }
  state.socket?.emit('watchdog', { user_name: state.user });
}

// `POST /api/refresh`: the new tokens, or null when the session is over
// (refused) or the server cannot be reached.
async function refreshTokens(refreshToken) {
  try {
    const res = await fetch(`${SERVER}/api/refresh`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ refresh_token: refreshToken }),
    });
    if (res.status === 401) return { ended: true };
    if (!res.ok) return null;
    return await res.json();
  } catch {
    return null;
  }
}

// Trades the session's refresh token for a fresh access token (one trade
// at a time); true when the session goes on. A session the server ended
// logs the user out.
function renewSession() {
  if (!state.refresh) return Promise.resolve(false);
  if (state.renewing) return state.renewing;
  const refreshToken = state.refresh;
  state.renewing = (async () => {
    const renewed = await refreshTokens(refreshToken);
    state.renewing = null;
    if (renewed?.ended) {
      logout('Your session has expired. Please log in again.');
      return false;
    }
    const claims = renewed && decodeJwt(renewed.access_token);
    if (!claims || state.refresh !== refreshToken) return false;
    sessionStorage.setItem(TOKEN_KEY, renewed.access_token);
    sessionStorage.setItem(REFRESH_KEY, renewed.refresh_token);
    Object.assign(state, { token: renewed.access_token, refresh: renewed.refresh_token, exp: claims.exp });
    if (state.socket) {
      // For its next connect, and for the open socket, which would be
      // closed when its own token expires.
      state.socket.token = renewed.access_token;
      state.socket.emit('refresh', { token: renewed.access_token });
    }
    return true;
  })();
  return state.renewing;
}

function logout(message = '') {
  if (!state.token) return;
  if (state.refresh) {
    // Ends the session on the server too; nothing to wait for.
    fetch(`${SERVER}/api/logout`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ refresh_token: state.refresh }),
    }).catch(() => {});
  }
  state.socket?.close();
  state.timers.forEach(clearInterval);
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(REFRESH_KEY);
  closeRoom({ leaveSocket: false });
  Object.assign(state, {
    token: null, refresh: null, renewing: null, user: null, exp: 0, socket: null, timers: [],
    publicRooms: [], myRooms: [], online: new Set(),
  });
  $('current-user').textContent = '';
  $('public-rooms').replaceChildren();
  $('my-rooms').replaceChildren();
  state.renderedLists = '';
  clearError();
  showAuth(message);
}

function showAuth(message = '') {
  $('app-screen').hidden = true;
  $('auth-screen').hidden = false;
  $('auth-error').textContent = message;
  $('login-user').focus();
}

// ---------------------------------------------------------------------------
// Socket events

function onSocketConnect() {
  renderConnection();
  state.socket.emit('watchdog', { user_name: state.user });
  if (state.room) {
    rejoinSocketRoom(); // catches up on what was missed while disconnected
    quietly(loadMembers());
  }
  quietly(refreshLists());
  quietly(refreshOnline());
}

function onSocketEvent(name, p) {
  const payload = p && typeof p === 'object' ? p : {};
  switch (name) {
    case 'new_message':
      if (sameRoom(payload.room_id)) addMessages([payload]);
      break;
    case 'user_joined':
      if (!sameRoom(payload.room_id)) break;
      if (payload.user_name === state.user) markJoined();
      else showActivity(`${payload.user_name} joined the room`);
      break;
    case 'user_left':
      if (sameRoom(payload.room_id) && payload.user_name !== state.user) {
        showActivity(`${payload.user_name} left the room`);
      }
      break;
    case 'user_online':
      if (payload.user_name && payload.user_name !== state.user) {
        state.online.add(payload.user_name);
        renderMembers();
      }
      quietly(refreshOnline());
      break;
    case 'user_offline':
      state.online.delete(payload.user_name);
      renderMembers();
      quietly(refreshOnline());
      break;
    case 'presence':
      // Exact changes since the last batch: applied to the list read at
      // connect, no need to read it again.
      for (const name of payload.online || []) if (name !== state.user) state.online.add(name);
      for (const name of payload.offline || []) state.online.delete(name);
      renderMembers();
      break;
    case 'user_list_updated':
      quietly(loadMembers());
      quietly(refreshLists());
      break;
    case 'room_list_updated':
      quietly(refreshLists());
      quietly(checkOpenRoom());
      break;
    case 'user_kicked':
      if (payload.user_name === state.user) removedFromRoom();
      else quietly(loadMembers());
      break;
    case 'error':
      if (payload?.code === 9) {
        // The socket's token expired or its session ended: the server
        // closes it. Renew (or, if the session is over, log out) and
        // reconnect with the fresh token, without bothering the user.
        if (state.socket) state.socket.waitFor = renewSession();
        break;
      }
      showError(payload.message || 'The server refused the request');
      break;
    default:
      break;
  }
}

// Joined once the server acknowledges it (in a large room nobody gets
// user_joined, not even the joiner).
function joinSocketRoom() {
  state.joined = false;
  if (!state.room || !state.socket) return;
  const roomId = state.room.room_id;
  state.socket.emitWithAck('join', { room_id: roomId, user_name: state.user })
    .then((ack) => { if (ack && sameRoom(ack.room_id)) markJoined(); })
    .catch(() => {});
}

// After a reconnect: join with the newest chat_id we have, so the server
// replays what was sent meanwhile before the live messages (no gap, no
// duplicate). If it could not replay it all, the history fills the rest.
function rejoinSocketRoom() {
  const last = state.messages[state.messages.length - 1];
  if (!state.room || !last) {
    joinSocketRoom();
    quietly(loadHistory());
    return;
  }
  state.joined = false;
  const seq = state.roomSeq;
  const join = { room_id: state.room.room_id, user_name: state.user, last_chat_id: last.chat_id };
  if (!state.socket) return;
  state.socket.emitWithAck('join', join)
    .then((ack) => {
      if (seq !== state.roomSeq || !ack) return;
      if (sameRoom(ack.room_id)) markJoined();
      if (ack.complete === false) quietly(loadHistory());
    })
    .catch(() => quietly(loadHistory()));
}

function markJoined() {
  state.joined = true;
  const waiters = state.joinWaiters;
  state.joinWaiters = [];
  waiters.forEach((w) => w());
}

// Resolves once the server confirmed our join (its ack, or user_joined for us), or after a
// timeout: the server then answers for itself if the room is not joined.
function waitJoined() {
  if (state.joined) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { clearTimeout(timer); resolve(); };
    const timer = setTimeout(() => {
      state.joinWaiters = state.joinWaiters.filter((w) => w !== done);
      resolve();
    }, JOIN_WAIT_MS);
    state.joinWaiters.push(done);
  });
}

function renderConnection() {
  const connected = !!state.socket?.connected;
  const status = $('conn-status');
  status.textContent = connected ? 'connected' : 'reconnecting…';
  status.classList.toggle('ok', connected);
}

// ---------------------------------------------------------------------------
// Room lists

async function refreshLists() {
  const [publicRooms, myRooms] = await Promise.all([api('GET', '/rooms'), api('GET', '/user_rooms')]);
  if (!state.token) return;
  state.publicRooms = Array.isArray(publicRooms) ? publicRooms : [];
  state.myRooms = Array.isArray(myRooms) ? myRooms : [];
  renderRoomLists();
}

function renderRoomLists() {
  const signature = JSON.stringify([state.publicRooms, state.myRooms, state.room?.room_id, state.user]);
  if (signature === state.renderedLists) return;
  state.renderedLists = signature;
  const mine = new Set(state.myRooms.map((r) => r.room_id));

  const my = state.myRooms.map((r) => {
    const item = el('li', {
      className: 'room-item clickable' + (sameRoom(r.room_id) ? ' active' : ''),
      testid: 'my-room',
      data: { roomId: r.room_id },
      attrs: { role: 'button', tabindex: 0 },
      onClick: () => openRoomAction(r.room_id),
    },
    el('span', { className: 'room-name', text: r.room_name }),
    r.is_private ? el('span', { className: 'tag', text: 'private' }) : null,
    r.room_owner === state.user ? el('span', { className: 'tag owner', text: 'owner' }) : null);
    item.addEventListener('keydown', (e) => { if (e.key === 'Enter') openRoomAction(r.room_id); });
    return item;
  });
  $('my-rooms').replaceChildren(...(my.length ? my : [el('li', { className: 'muted', text: 'No rooms yet' })]));

  const pub = state.publicRooms.map((r) => el('li', {
    className: 'room-item' + (sameRoom(r.room_id) ? ' active' : ''),
    testid: 'public-room',
    data: { roomId: r.room_id },
  },
  el('span', { className: 'room-text' },
    el('span', { className: 'room-name', text: r.room_name }),
    el('span', { className: 'room-by', text: `by ${r.room_owner}` })),
  el('button', {
    className: 'small-btn',
    testid: 'join-room',
    text: mine.has(r.room_id) ? 'Open' : 'Join',
    attrs: { type: 'button' },
    onClick: action(() => joinPublic(r.room_id)),
  })));
  $('public-rooms').replaceChildren(...(pub.length ? pub : [el('li', { className: 'muted', text: 'No public rooms' })]));
}

async function joinPublic(roomId) {
  try {
    await api('POST', '/room/join_public', { room_id: roomId });
  } catch (e) {
    if (!(e.status === 400 && e.message === 'User already in room')) throw e;
  }
  await refreshLists();
  await openRoom(roomId);
}

async function joinPrivate() {
  const key = $('join-key').value;
  const before = await api('GET', '/user_rooms');
  const known = new Set((before || []).map((r) => r.room_id));
  await api('POST', '/room/join_private', { access_key: key });
  $('join-key').value = '';
  await refreshLists();
  const joined = state.myRooms.find((r) => !known.has(r.room_id));
  if (joined) await openRoom(joined.room_id);
}

async function createRoom() {
  const isPrivate = $('new-room-private').checked;
  const res = await api('POST', '/room/create', {
    room_name: $('new-room-name').value,
    is_private: isPrivate,
    access_key: isPrivate ? $('new-room-key').value : null,
  });
  $('new-room-name').value = '';
  $('new-room-key').value = '';
  $('new-room-private').checked = false;
  await refreshLists();
  if (res && res.room_id != null) await openRoom(res.room_id);
}

// ---------------------------------------------------------------------------
// The open room

function openRoomAction(roomId) {
  clearError();
  openRoom(roomId).catch((e) => showError(e.message));
}

async function openRoom(roomId) {
  const id = Number(roomId);
  if (sameRoom(id)) return;
  closeRoom({ leaveSocket: true });
  const seq = state.roomSeq;
  const room = await api('GET', `/room?room_id=${encodeURIComponent(id)}`);
  if (seq !== state.roomSeq || !state.token) return;
  state.room = room;
  state.room.room_id = Number(room.room_id);
  fillEditForm();
  renderRoom();
  renderRoomLists();
  joinSocketRoom();
  await Promise.all([loadHistory(), loadMembers(), refreshOnline()]);
  $('message-input').focus();
}

function closeRoom({ leaveSocket }) {
  if (state.room && leaveSocket) {
    state.socket?.emit('leave', { room_id: state.room.room_id, user_name: state.user });
  }
  state.roomSeq += 1;
  Object.assign(state, {
    room: null, messages: [], messageIds: new Set(), members: [], wasMember: false, joined: false,
  });
  markJoined(); // release any waiting sender; the send then fails on its own
  state.joined = false;
  $('messages').replaceChildren();
  $('members').replaceChildren();
  state.renderedMembers = '';
  $('room-activity').replaceChildren();
  renderRoom();
  if (state.token) renderRoomLists();
}

// The room was deleted, or we were kicked: close it and say why.
function removedFromRoom() {
  if (!state.room) return;
  const name = state.room.room_name;
  closeRoom({ leaveSocket: false });
  showError(`You were removed from ${name}`);
  quietly(refreshLists());
}

async function checkOpenRoom() {
  if (!state.room) return;
  const seq = state.roomSeq;
  const name = state.room.room_name;
  try {
    const room = await api('GET', `/room?room_id=${state.room.room_id}`);
    if (seq !== state.roomSeq) return;
    state.room = { ...room, room_id: Number(room.room_id) };
    renderRoom();
    if (!$('edit-form').contains(document.activeElement)) fillEditForm();
  } catch (e) {
    if (e.status === 404 && seq === state.roomSeq) {
      closeRoom({ leaveSocket: false });
      showError(`Room ${name} no longer exists`);
    }
  }
}

function renderRoom() {
  const room = state.room;
  $('room-view').hidden = !room;
  $('room-side').hidden = !room;
  $('no-room').hidden = !!room;
  if (!room) return;
  $('room-title').textContent = room.room_name;
  $('room-owner').textContent = `${room.is_private ? 'Private' : 'Public'} room · owner ${room.room_owner}`;
  const showKey = isOwner() && room.is_private && room.access_key;
  $('room-key-wrap').hidden = !showKey;
  $('room-key').textContent = showKey ? room.access_key : '';
  $('owner-panel').hidden = !isOwner();
  renderMembers();
}

function fillEditForm() {
  const room = state.room;
  if (!room) return;
  $('edit-name').value = room.room_name;
  $('edit-private').checked = !!room.is_private;
  $('edit-key').value = room.access_key || '';
}

// --- messages

async function loadHistory() {
  if (!state.room) return;
  const seq = state.roomSeq;
  const history = await api('GET', `/chat_history?room_id=${state.room.room_id}`);
  if (seq === state.roomSeq && Array.isArray(history)) addMessages(history);
}

function messageItem(m) {
  const mine = m.user_name === state.user;
  return el('li', { className: 'message' + (mine ? ' mine' : ''), testid: 'message', data: { chatId: m.chat_id } },
    el('div', { className: 'message-head' },
      el('span', { className: 'message-user', testid: 'message-user', text: m.user_name }),
      el('time', { className: 'message-time', text: formatTime(m.create_date), attrs: { datetime: m.create_date || '' } })),
    el('div', { className: 'message-text', testid: 'message-text', text: m.message }));
}

function addMessages(list) {
  const box = $('messages');
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  let appendOnly = true;
  const fresh = [];
  for (const m of list) {
    const id = Number(m.chat_id);
    if (!Number.isFinite(id) || state.messageIds.has(id)) continue;
    state.messageIds.add(id);
    const msg = { ...m, chat_id: id };
    const last = state.messages[state.messages.length - 1];
    if (last && last.chat_id > id) appendOnly = false;
    state.messages.push(msg);
    fresh.push(msg);
  }
  if (!fresh.length) return;
  if (appendOnly) {
    box.append(...fresh.map(messageItem));
  } else {
    state.messages.sort((a, b) => a.chat_id - b.chat_id);
    box.replaceChildren(...state.messages.map(messageItem));
  }
  if (nearBottom || fresh.some((m) => m.user_name === state.user)) box.scrollTop = box.scrollHeight;
}

async function sendMessage() {
  const input = $('message-input');
  const text = input.value;
  const room = state.room;
  if (!room || !text.trim()) return;
  input.value = '';
  try {
    await waitJoined();
    if (room !== state.room) throw new Error('The room was closed before the message was sent');
    const ack = await state.socket.emitWithAck('message', {
      room_id: room.room_id, user_name: state.user, message: text,
    });
    if (ack && ack.error) throw new Error(ack.error);
    if (ack && ack.chat_id != null && room === state.room) {
      // Normally new_message already arrived; this covers a late event (deduped by chat_id).
      addMessages([{ chat_id: ack.chat_id, room_id: room.room_id, user_name: state.user, message: text, create_date: new Date().toISOString() }]);
    }
  } catch (e) {
    if (room === state.room && !input.value) input.value = text;
    throw e;
  }
}

// --- members and presence

async function loadMembers() {
  if (!state.room) return;
  const seq = state.roomSeq;
  const roomId = state.room.room_id;
  let members;
  try {
    members = await api('GET', `/user_list?room_id=${roomId}`);
  } catch (e) {
    // A private room we no longer belong to (or a deleted room) is a 404.
    if (e.status === 404 && seq === state.roomSeq && state.wasMember && state.leavingRoom !== roomId) removedFromRoom();
    throw e;
  }
  if (seq !== state.roomSeq || !Array.isArray(members)) return;
  state.members = members;
  const member = members.some((m) => m.user_name === state.user);
  if (state.wasMember && !member && state.leavingRoom !== roomId) {
    removedFromRoom(); // the user_kicked event was missed (e.g. while reconnecting)
    return;
  }
  state.wasMember = member;
  renderMembers();
}

async function refreshOnline() {
  if (!state.token) return;
  const online = await api('GET', '/users/online');
  if (!Array.isArray(online)) return;
  state.online = new Set(online);
  renderMembers();
}

function renderMembers() {
  if (!state.room) {
    state.renderedMembers = '';
    return;
  }
  const owner = isOwner();
  const connected = !!state.socket?.connected;
  const signature = JSON.stringify([state.room.room_id, state.room.room_owner, owner, connected,
    state.members.map((m) => [m.user_name, state.online.has(m.user_name)])]);
  if (signature === state.renderedMembers) return;
  state.renderedMembers = signature;
  const items = [...state.members]
    .sort((a, b) => a.user_name.localeCompare(b.user_name))
    .map(({ user_name: name }) => {
      const me = name === state.user;
      const online = me ? connected : state.online.has(name);
      return el('li', { className: 'member' + (online ? ' online' : ''), testid: 'member', data: { user: name, online } },
        el('span', { className: 'dot', attrs: { 'aria-hidden': 'true' } }),
        el('span', { className: 'member-name', text: name + (me ? ' (you)' : '') }),
        name === state.room.room_owner ? el('span', { className: 'tag owner', text: 'owner' }) : null,
        el('span', { className: 'presence', text: online ? 'online' : 'offline' }),
        owner && !me ? el('button', {
          className: 'small-btn danger',
          testid: 'kick',
          text: 'Kick',
          attrs: { type: 'button' },
          onClick: action(() => kick(name)),
        }) : null);
    });
  $('members').replaceChildren(...items);
}

// --- owner and member actions

async function kick(name) {
  const room = state.room;
  await api('POST', '/user_kick', { room_id: room.room_id, user_to_kick: name });
  await loadMembers();
}

async function editRoom() {
  const room = state.room;
  const isPrivate = $('edit-private').checked;
  await api('POST', '/room/edit', {
    room_id: room.room_id,
    new_name: $('edit-name').value,
    is_private: isPrivate,
    new_access_key: isPrivate ? $('edit-key').value : null,
  });
  await checkOpenRoom();
  fillEditForm();
  await refreshLists();
}

// Leaving and deleting close the room ourselves, so the events they cause
// must not be mistaken for being removed by someone else.
async function departRoom(path) {
  const room = state.room;
  state.leavingRoom = room.room_id;
  try {
    await api('POST', path, { room_id: room.room_id });
    if (sameRoom(room.room_id)) closeRoom({ leaveSocket: true });
  } finally {
    state.leavingRoom = null;
  }
  await refreshLists();
}

const deleteRoom = () => departRoom('/room/delete');
const leaveRoom = () => departRoom('/room/leave');

// ---------------------------------------------------------------------------
// Wiring

function init() {
  // The API reference is served by the API, wherever this page comes from.
  for (const link of document.querySelectorAll('a.api-link')) link.href = `${SERVER}/api/docs`;
  $('auth-form').addEventListener('submit', (e) => { e.preventDefault(); authenticate('login'); });
  $('register-button').addEventListener('click', () => authenticate('register'));
  $('logout-button').addEventListener('click', () => logout());
  $('app-error-close').addEventListener('click', clearError);

  $('create-form').addEventListener('submit', action(createRoom));
  $('join-form').addEventListener('submit', action(joinPrivate));
  $('message-form').addEventListener('submit', action(sendMessage));
  $('edit-form').addEventListener('submit', action(editRoom));
  $('delete-room-button').addEventListener('click', action(deleteRoom));
  $('leave-room-button').addEventListener('click', action(leaveRoom));

  const syncKey = (box, input) => input.classList.toggle('dimmed', !box.checked);
  for (const [box, input] of [['new-room-private', 'new-room-key'], ['edit-private', 'edit-key']]) {
    $(box).addEventListener('change', () => syncKey($(box), $(input)));
    syncKey($(box), $(input));
  }

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) startSession(saved);
  else showAuth();
}

init();
