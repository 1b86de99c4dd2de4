// Validates docs/asyncapi.yaml with the AsyncAPI parser (@asyncapi/parser,
// which scripts/test.sh installs into KOM_NODE_DIR): the document must
// parse as AsyncAPI 3 with no error-level diagnostic.
//   usage: KOM_NODE_DIR=DIR node docs/check-asyncapi.mjs [docs/asyncapi.yaml]
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(join(process.env.KOM_NODE_DIR || process.cwd(), "index.js"));
const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");

const path = process.argv[2] || new URL("./asyncapi.yaml", import.meta.url).pathname;
const { document, diagnostics } = await new Parser().parse(readFileSync(path, "utf8"));
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
for (const d of diagnostics.filter((d) => d.severity <= DiagnosticSeverity.Warning)) {
  const where = d.path.join(".");
  console.log(`${d.severity === DiagnosticSeverity.Error ? "error" : "warning"} ${where}: ${d.message}`);
}
if (!document || errors.length) {
  console.log(`asyncapi: ${errors.length} errors`);
  process.exit(1);
}
const messages = document.allMessages().length;
console.log(`asyncapi: valid AsyncAPI ${document.version()}: ${document.channels().length} channels, ${document.operations().length} operations, ${messages} messages`);
