// The SDK against bare fetch doing the same requests, alternating, against a running
// ClinikAPI: searchAll over every page of a search, and a 1,000-entry transaction.
//   CLINIK_API_KEY=ck_live_... node bench/sdk_bench.mjs [--base URL] [--rounds 5] [--n 1000]
// Run from the repository root after `make sdk`. Only loopback servers, bounded rounds.
import { createRequire } from "node:module";
import { performance } from "node:perf_hooks";

const require = createRequire(new URL("../sdk/package.json", import.meta.url));
const { BundleBuilder, ClinikClient } = await import(require.resolve("@clinikapi/sdk"));

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => (arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []),
);
const base = args.base ?? process.env.CLINIK_BASE_URL ?? "http://127.0.0.1:8000/fhir/R4";
if (!/^http:\/\/(127\.|localhost|\[::1\])/.test(base)) throw new Error("loopback servers only");
const key = process.env.CLINIK_API_KEY;
const rounds = Number(args.rounds ?? 5);
const n = Number(args.n ?? 1000);
const family = `bench${Date.now().toString(36)}`;
const headers = { Authorization: `Bearer ${key}`, Accept: "application/fhir+json" };
const client = new ClinikClient({ apiKey: key, baseUrl: base });

function patients(count, tag) {
  return Array.from({ length: count }, (_, i) => ({ resourceType: "Patient", name: [{ family: tag, given: [`P${i}`] }] }));
}

async function sdkTransaction(tag) {
  const tx = new BundleBuilder("transaction");
  for (const p of patients(n, tag)) tx.create(p);
  await client.bundle(tx.build());
}

async function bareTransaction(tag) {
  const entry = patients(n, tag).map((resource) => ({
    fullUrl: `urn:uuid:${crypto.randomUUID()}`,
    resource,
    request: { method: "POST", url: "Patient" },
  }));
  const answer = await fetch(base, {
    method: "POST",
    headers: { ...headers, "Content-Type": "application/fhir+json", "Idempotency-Key": crypto.randomUUID() },
    body: JSON.stringify({ resourceType: "Bundle", type: "transaction", entry }),
  });
  if (!answer.ok) throw new Error(`transaction: ${answer.status}`);
  await answer.arrayBuffer();
}

async function sdkSearchAll() {
  let count = 0;
  for await (const _ of client.searchAll("Patient", { family, _count: 100 })) count++;
  return count;
}

async function bareSearchAll() {
  let url = `${base}/Patient?family=${family}&_count=100`;
  let count = 0;
  while (url) {
    const answer = await fetch(url, { headers });
    const page = await answer.json();
    count += (page.entry ?? []).filter((e) => e.search?.mode !== "include").length;
    url = page.link?.find((l) => l.relation === "next")?.url;
  }
  return count;
}

async function timed(fn) {
  const start = performance.now();
  const cpu = process.cpuUsage();
  const result = await fn();
  const used = process.cpuUsage(cpu);
  return { ms: performance.now() - start, cpuMs: (used.user + used.system) / 1000, result };
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

await sdkTransaction(family); // the data searchAll pages through, and a warm-up
const results = { "transaction sdk": [], "transaction bare": [], "searchAll sdk": [], "searchAll bare": [] };
const cpu = { "searchAll sdk": [], "searchAll bare": [] };
for (let round = 0; round < rounds; round++) {
  const order = round % 2 ? ["bare", "sdk"] : ["sdk", "bare"];
  for (const who of order) {
    const t = await timed(() => (who === "sdk" ? sdkTransaction(`tx${family}`) : bareTransaction(`tx${family}`)));
    results[`transaction ${who}`].push(t.ms);
    const s = await timed(() => (who === "sdk" ? sdkSearchAll() : bareSearchAll()));
    if (s.result !== n) throw new Error(`searchAll ${who} saw ${s.result} of ${n}`);
    results[`searchAll ${who}`].push(s.ms);
    cpu[`searchAll ${who}`].push(s.cpuMs);
  }
}
for (const workload of ["transaction", "searchAll"]) {
  const sdk = median(results[`${workload} sdk`]);
  const bare = median(results[`${workload} bare`]);
  const rate = (ms) => (workload === "transaction" ? `${((n / ms) * 1000).toFixed(0)} resources/s` : `${((n / ms) * 1000).toFixed(0)} resources/s`);
  console.log(
    `${workload.padEnd(11)} sdk ${sdk.toFixed(0)} ms (${rate(sdk)})  bare fetch ${bare.toFixed(0)} ms (${rate(bare)})  sdk/bare throughput ${((bare / sdk) * 100).toFixed(1)} %`,
  );
}
console.log(
  `client CPU per searchAll of ${n}: sdk ${median(cpu["searchAll sdk"]).toFixed(1)} ms, bare ${median(cpu["searchAll bare"]).toFixed(1)} ms (${rounds} rounds, medians)`,
);
