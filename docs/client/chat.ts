// A Komunikator client in TypeScript, typed from the protocol documents:
// the REST calls by openapi-fetch over the types openapi-typescript
// generates from ../openapi.yaml, the Socket.IO events by socket.io-client
// over the event maps generate-events.mjs writes from ../asyncapi.yaml.
// A call, field or event the documents do not have does not compile.
//
// It registers (or logs in), creates a room, joins it over a socket, sends
// a message, sees it come back live and in the history, and leaves.
//   usage: node chat.js SERVER_URL USER_NAME PASSWORD
import createClient from "openapi-fetch";
import { io, type Socket } from "socket.io-client";

import type { paths } from "./generated/api";
import type { ClientToServerEvents, ServerToClientEvents } from "./generated/events";

type ChatMessage = Parameters<ServerToClientEvents["new_message"]>[0];

const WAIT_MS = 10_000;

async function main(server: string, userName: string, password: string): Promise<void> {
  const api = createClient<paths>({ baseUrl: server });
  const credentials = { user_name: userName, password };

  // An account, or the session of an existing one.
  let tokens = (await api.POST("/api/register", { body: credentials })).data;
  if (!tokens) {
    const login = await api.POST("/api/login", { body: credentials });
    if (!login.data) throw new Error(`login: ${login.error?.error ?? login.response.status}`);
    tokens = login.data;
  }
  const auth = { headers: { Authorization: `Bearer ${tokens.access_token}` } };

  const created = await api.POST("/api/room/create", {
    ...auth,
    body: { room_name: `${userName}'s room`, is_private: false },
  });
  if (!created.data) throw new Error(`create: ${created.error?.error}`);
  const roomId = created.data.room_id;

  // The token goes in the connect payload, with presence asked for in
  // batches; the default transports (long-polling, then the upgrade to
  // WebSocket), as a browser uses them.
  const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io(server, {
    auth: { token: tokens.access_token, presence: "batched" },
    reconnection: false,
  });
  const online = new Set<string>();
  socket.on("presence", ({ online: came, offline: went }) => {
    came.forEach((name) => online.add(name));
    went.forEach((name) => online.delete(name));
  });
  socket.on("error", ({ message, code }) => console.error(`refused: ${message} (code ${code})`));
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });

  const joined = await socket.timeout(WAIT_MS).emitWithAck("join", { room_id: roomId });
  if ("error" in joined) throw new Error(`join: ${joined.error}`);

  const live = new Promise<ChatMessage>((resolve) => socket.on("new_message", resolve));
  const sent = await socket
    .timeout(WAIT_MS)
    .emitWithAck("message", { room_id: roomId, message: "Hello from TypeScript" });
  if ("error" in sent) throw new Error(`message: ${sent.error} (code ${sent.code})`);
  const received = await live;

  // A heartbeat brings the user online: the room's next presence batch says so.
  const announced = new Promise<void>((resolve) =>
    socket.on("presence", () => { if (online.has(userName)) resolve(); }));
  socket.emit("watchdog", { user_name: userName });
  await Promise.race([
    announced,
    new Promise((_, reject) => setTimeout(() => reject(new Error("not announced online")), WAIT_MS)),
  ]);
  if (received.chat_id !== sent.chat_id) throw new Error(`got ${received.chat_id}, sent ${sent.chat_id}`);

  // An acknowledged message is in every later read of the history.
  const history = await api.GET("/api/chat_history", {
    ...auth,
    params: { query: { room_id: String(roomId) } },
  });
  if (!history.data?.some((m) => m.chat_id === sent.chat_id)) throw new Error("not in the history");

  socket.emit("leave", { room_id: roomId });
  socket.disconnect();
  await api.POST("/api/logout", { body: { refresh_token: tokens.refresh_token } });
  console.log(`chat ${sent.chat_id} in room ${roomId} at ${received.create_date}: sent, received, stored; online announced`);
}

const [server, userName, password] = process.argv.slice(2);
if (!server || !userName || !password) {
  console.error("usage: node chat.js SERVER_URL USER_NAME PASSWORD");
  process.exit(2);
}
main(server, userName, password).catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
