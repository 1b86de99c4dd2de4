// Writes the Socket.IO event maps of docs/asyncapi.yaml as TypeScript, for
// socket.io-client's typed `Socket<ServerToClientEvents, ClientToServerEvents>`:
// what the `socket` channel's send operations carry becomes a listener in
// ServerToClientEvents, what its receive operations take (with the ack their
// reply names) an emitter in ClientToServerEvents. A schema construct it does
// not know is an error, never a silent `any`.
//   usage: node generate-events.mjs ASYNCAPI_YAML OUT_TS
// Needs @asyncapi/parser (in ./node_modules, or KOM_NODE_DIR's).
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const [input, output] = process.argv.slice(2);
if (!input || !output) {
  console.error("usage: node generate-events.mjs ASYNCAPI_YAML OUT_TS");
  process.exit(2);
}
const require = createRequire(join(process.env.KOM_NODE_DIR || process.cwd(), "index.js"));
const { Parser } = require("@asyncapi/parser");
const { document, diagnostics } = await new Parser().parse(readFileSync(input, "utf8"));
if (!document) {
  for (const d of diagnostics) console.error(`${d.path.join(".")}: ${d.message}`);
  process.exit(1);
}

const SCALARS = { string: "string", integer: "number", number: "number", boolean: "boolean", null: "null" };

/** The TypeScript type of a (dereferenced) JSON schema. */
function typeOf(schema, where) {
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.oneOf) return schema.oneOf.map((s, i) => typeOf(s, `${where}.oneOf[${i}]`)).join(" | ");
  if (Array.isArray(schema.type)) return schema.type.map((t) => typeOf({ ...schema, type: t }, where)).join(" | ");
  if (schema.type === "object") {
    const required = new Set(schema.required || []);
    const fields = Object.entries(schema.properties || {}).map(([name, property]) => {
      const doc = property.description ? `/** ${property.description.replace(/\s+/g, " ")} */ ` : "";
      return `${doc}${name}${required.has(name) ? "" : "?"}: ${typeOf(property, `${where}.${name}`)};`;
    });
    return `{ ${fields.join(" ")} }`;
  }
  if (schema.type === "array") return `Array<${typeOf(schema.items || {}, `${where}[]`)}>`;
  if (SCALARS[schema.type]) return SCALARS[schema.type];
  throw new Error(`${input}: no TypeScript for the schema at ${where}: ${JSON.stringify(schema)}`);
}

/** The parameters of an event carrying `message`: none for a null payload. */
function params(message) {
  const schema = message.payload()?.json();
  if (!schema || schema.type === "null") return [];
  return [`payload: ${typeOf(schema, message.id())}`];
}

const listeners = [];
const emitters = [];
for (const op of document.operations().all()) {
  if (!op.channels().all().some((channel) => channel.id() === "socket")) continue;
  for (const message of op.messages().all()) {
    const summary = message.summary() || op.summary();
    const doc = summary ? `  /** ${summary.replace(/\s+/g, " ")} */\n` : "";
    if (op.action() === "send") {
      listeners.push(`${doc}  ${message.name()}: (${params(message).join(", ")}) => void;`);
      continue;
    }
    const args = params(message);
    const replies = op.reply()?.messages().all() || [];
    if (replies.length) {
      const ack = replies.map((reply) => typeOf(reply.payload().json(), reply.id())).join(" | ");
      args.push(`ack: (reply: ${ack}) => void`);
    }
    emitters.push(`${doc}  ${message.name()}: (${args.join(", ")}) => void;`);
  }
}

mkdirSync(dirname(output), { recursive: true });
writeFileSync(output, `// Generated from ${input} by generate-events.mjs: do not edit.

/** What the server emits to a socket. */
export interface ServerToClientEvents {
${listeners.join("\n")}
}

/** What a socket may emit to the server (acknowledged where a reply is documented). */
export interface ClientToServerEvents {
${emitters.join("\n")}
}
`);
console.log(`${output}: ${listeners.length} server events, ${emitters.length} client events`);
