// A backend proxy for the demo page: serves the page and forwards /fhir/R4/* to
// ClinikAPI with the API key added here, on the server. The browser never sees it.
//   CLINIK_BASE_URL=http://127.0.0.1:8000/fhir/R4 CLINIK_API_KEY=ck_live_... node server.mjs
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { build } from "esbuild";

const upstream = new URL(process.env.CLINIK_BASE_URL ?? "http://127.0.0.1:8000/fhir/R4");
const key = process.env.CLINIK_API_KEY ?? "";
const port = Number(process.env.PORT ?? 5173);
const here = new URL(".", import.meta.url);

const bundle = await build({
  entryPoints: [new URL("app.tsx", here).pathname],
  bundle: true,
  write: false,
  format: "esm",
  jsx: "automatic",
  minify: true,
  define: { "process.env.NODE_ENV": '"production"' },
});
const files = {
  "/": ["text/html", await readFile(new URL("index.html", here))],
  "/app.js": ["text/javascript", bundle.outputFiles[0].contents],
  "/styles.css": ["text/css", await readFile(new URL("../packages/react/src/styles.css", here))],
};
const FORWARDED = ["accept", "content-type", "if-match", "if-none-exist", "idempotency-key", "prefer"];

const server = createServer(async (request, response) => {
  const url = new URL(request.url ?? "/", "http://localhost");
  if (url.pathname === "/favicon.ico") {
    response.writeHead(204);
    response.end();
    return;
  }
  if (!url.pathname.startsWith("/fhir/R4")) {
    const file = files[url.pathname];
    response.writeHead(file ? 200 : 404, { "Content-Type": file ? file[0] : "text/plain" });
    response.end(file ? file[1] : "not found");
    return;
  }
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  const headers = { Authorization: `Bearer ${key}` };
  for (const name of FORWARDED) if (request.headers[name]) headers[name] = request.headers[name];
  const target = `${upstream.origin}${url.pathname}${url.search}`;
  try {
    const answer = await fetch(target, {
      method: request.method,
      headers,
      body: chunks.length ? Buffer.concat(chunks) : undefined,
    });
    const out = {};
    for (const name of ["content-type", "etag", "location", "retry-after", "x-request-id", "ratelimit"]) {
      const value = answer.headers.get(name);
      if (value) out[name] = value;
    }
    response.writeHead(answer.status, out);
    // Links in answers (paging, fullUrl) name ClinikAPI: point them back at this proxy.
    const text = await answer.text();
    response.end(text.replaceAll(upstream.origin, `http://${request.headers.host}`));
  } catch {
    response.writeHead(502, { "Content-Type": "application/fhir+json" });
    response.end(JSON.stringify({ resourceType: "OperationOutcome", issue: [{ severity: "error", code: "transient", diagnostics: "ClinikAPI is unreachable" }] }));
  }
});
server.listen(port, "127.0.0.1", () => console.log(`demo on http://127.0.0.1:${port}/`));
