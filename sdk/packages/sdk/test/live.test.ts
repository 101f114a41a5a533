/**
 * The SDK against a live ClinikAPI (real PostgreSQL, Redis, the full middleware stack).
 * `make test` starts the servers and sets the variables (tests/test_sdk.py); without
 * them this file says it was skipped.
 */
import { createServer, connect, type Server, type Socket } from "node:net";
import type { AddressInfo } from "node:net";

import type { Bundle, Patient } from "fhir/r4";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { BundleBuilder, ClinikClient, ClinikError } from "../src/index.js";

const BASE = process.env.CLINIK_BASE_URL;
const KEY = process.env.CLINIK_API_KEY;
const OTHER_KEY = process.env.CLINIK_OTHER_API_KEY;
const LIMITED_BASE = process.env.CLINIK_LIMITED_BASE_URL;
const LIMITED_KEY = process.env.CLINIK_LIMITED_API_KEY;
const live = Boolean(BASE && KEY && OTHER_KEY);

if (!live) {
  console.warn(
    "SKIPPED: the live ClinikAPI tests (set CLINIK_BASE_URL, CLINIK_API_KEY and " +
      "CLINIK_OTHER_API_KEY, or run `make test`, which does)",
  );
}

const run = `sdk-${Date.now().toString(36)}`;

function client(options: Partial<ConstructorParameters<typeof ClinikClient>[0]> = {}) {
  return new ClinikClient({ baseUrl: BASE ?? "", apiKey: KEY ?? "", ...options });
}

function patient(family: string, extra: Partial<Patient> = {}): Patient {
  return { resourceType: "Patient", name: [{ family, given: ["Ada"] }], ...extra };
}

describe.skipIf(!live)("ClinikClient against a live server", () => {
  it("creates, reads, vreads, updates, patches, reads history and deletes", async () => {
    const api = client();
    const created = await api.create(patient(`${run}-crud`, { gender: "female" }));
    expect(created.id).toBeTruthy();
    expect(created.meta?.versionId).toBe("1");
    const id = created.id ?? "";

    const read = await api.read("Patient", id);
    expect(read.name?.[0]?.family).toBe(`${run}-crud`);

    const updated = await api.update({ ...read, gender: "other" }, { ifMatch: true });
    expect(updated.meta?.versionId).toBe("2");

    const stale = await api.update({ ...read, gender: "male" }, { ifMatch: "1" }).catch((e) => e);
    expect(stale).toBeInstanceOf(ClinikError);
    expect((stale as ClinikError).status).toBe(412);

    const patched = await api.patch("Patient", id, [{ op: "replace", path: "/gender", value: "male" }]);
    expect(patched.gender).toBe("male");

    const first = await api.vread("Patient", id, "1");
    expect(first.gender).toBe("female");

    const history = await api.history("Patient", id);
    expect(history.entry?.map((e) => e.resource?.meta?.versionId)).toEqual(["3", "2", "1"]);

    await api.delete("Patient", id);
    const gone = await api.read("Patient", id).catch((e) => e);
    expect(gone).toBeInstanceOf(ClinikError);
    expect((gone as ClinikError).isNotFound).toBe(true);
    expect((gone as ClinikError).outcome?.resourceType).toBe("OperationOutcome");
  });

  it("does conditional create, update and delete", async () => {
    const api = client();
    const identifier = { system: "urn:sdk-test", value: `${run}-cond` };
    const a = await api.create(patient(`${run}-cond`, { identifier: [identifier] }), {
      ifNoneExist: { identifier: `urn:sdk-test|${identifier.value}` },
    });
    const b = await api.create(patient(`${run}-cond`, { identifier: [identifier] }), {
      ifNoneExist: { identifier: `urn:sdk-test|${identifier.value}` },
    });
    expect(b.id).toBe(a.id);

    const updated = await api.conditionalUpdate(
      patient(`${run}-cond`, { identifier: [identifier], gender: "unknown" }),
      { identifier: `urn:sdk-test|${identifier.value}` },
    );
    expect(updated.id).toBe(a.id);
    expect(updated.gender).toBe("unknown");

    await api.conditionalDelete("Patient", { identifier: `urn:sdk-test|${identifier.value}` });
    const after = await api.search("Patient", { identifier: `urn:sdk-test|${identifier.value}` });
    expect(after.entry ?? []).toHaveLength(0);
  });

  it("searches by GET and POST and pages through 1,000 results with searchAll", async () => {
    const api = client();
    const family = `${run}-many`;
    for (let chunk = 0; chunk < 4; chunk++) {
      const batch = new BundleBuilder("transaction");
      for (let i = 0; i < 250; i++) batch.create(patient(family, { birthDate: "1990-01-01" }));
      const answer = await api.bundle(batch.build());
      expect(answer.entry).toHaveLength(250);
    }
    const byGet = await api.search("Patient", { family, _count: 5, _total: "accurate" });
    const byPost = await api.search("Patient", { family, _count: 5, _total: "accurate" }, { method: "POST" });
    expect(byGet.total).toBe(1000);
    expect(byPost.total).toBe(1000);

    const ids = new Set<string>();
    for await (const found of api.searchAll("Patient", { family, _count: 100 })) {
      expect(found.resourceType).toBe("Patient");
      ids.add(found.id ?? "");
    }
    expect(ids.size).toBe(1000);
  });

  it("builds a transaction whose urn:uuid references resolve, then reads the reference", async () => {
    const api = client();
    const tx = new BundleBuilder("transaction");
    const subject = tx.create(patient(`${run}-tx`));
    tx.create({
      resourceType: "Observation",
      status: "final",
      code: { text: "Body weight" },
      subject,
      valueQuantity: { value: 61, unit: "kg", system: "http://unitsofmeasure.org", code: "kg" },
    });
    const answer: Bundle = await api.bundle(tx.build());
    const location = answer.entry?.[1]?.response?.location ?? "";
    const [type, id] = location.split("/");
    expect(type).toBe("Observation");
    const observation = await api.read("Observation", id ?? "");
    expect(observation.subject?.reference).toMatch(/^Patient\/[^/]+$/);
    const owner = await api.readReference<Patient>(observation.subject ?? {});
    expect(owner.name?.[0]?.family).toBe(`${run}-tx`);
  });

  it("carries the OperationOutcome and the request id in errors", async () => {
    const api = client();
    const error = await api
      .create({ resourceType: "Patient", gender: "robot" } as unknown as Patient)
      .catch((e) => e);
    expect(error).toBeInstanceOf(ClinikError);
    expect(error.status).toBe(400);
    expect(error.requestId).toBeTruthy();
    expect(error.issues.length).toBeGreaterThan(0);
    expect(String(error)).not.toContain(KEY ?? "");
  });

  it("answers 404 for another tenant's resource, exactly as for a random id", async () => {
    const mine = await client().create(patient(`${run}-private`));
    const other = client({ apiKey: OTHER_KEY ?? "" });
    const theirs = await other.read("Patient", mine.id ?? "").catch((e) => e);
    const random = await other.read("Patient", "no-such-id-anywhere").catch((e) => e);
    expect(theirs.status).toBe(404);
    expect(random.status).toBe(404);
    const search = await other.search("Patient", { family: `${run}-private` });
    expect(search.entry ?? []).toHaveLength(0);
  });

  it("aborts on an AbortSignal", async () => {
    const controller = new AbortController();
    controller.abort();
    await expect(client().read("Patient", "x", { signal: controller.signal })).rejects.toThrow();
  });

  describe("a connection dropped after the server received a create", () => {
    let proxy: Server;
    let proxyUrl = "";
    let dropped = 0;

    beforeAll(async () => {
      const target = new URL(BASE ?? "");
      proxy = createServer((downstream: Socket) => {
        const upstream = connect(Number(target.port), target.hostname);
        downstream.pipe(upstream);
        const dropThisOne = dropped === 0;
        upstream.on("data", (chunk) => {
          if (dropThisOne) {
            // The server has answered, so it created the resource: the client never hears.
            dropped++;
            downstream.destroy();
            upstream.destroy();
            return;
          }
          downstream.write(chunk);
        });
        upstream.on("end", () => downstream.end());
        upstream.on("error", () => downstream.destroy());
        downstream.on("error", () => upstream.destroy());
      });
      await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
      const { port } = proxy.address() as AddressInfo;
      proxyUrl = `http://127.0.0.1:${port}${target.pathname}`;
    });

    afterAll(() => {
      proxy.close();
    });

    it("is retried with the same Idempotency-Key and creates one resource", async () => {
      const family = `${run}-retried`;
      const api = client({ baseUrl: proxyUrl, maxRetries: 2 });
      const created = await api.create(patient(family));
      expect(dropped).toBe(1);
      const found = await client().search("Patient", { family, _total: "accurate" });
      expect(found.total).toBe(1);
      expect(found.entry?.[0]?.resource?.id).toBe(created.id);
    });
  });

  it.skipIf(!LIMITED_BASE)("waits out a 429 and then succeeds", async () => {
    const statuses: number[] = [];
    const recording: typeof fetch = async (input, init) => {
      const response = await fetch(input, init);
      statuses.push(response.status);
      return response;
    };
    const api = new ClinikClient({
      baseUrl: LIMITED_BASE ?? "",
      apiKey: LIMITED_KEY ?? "",
      fetch: recording,
      maxRetries: 5,
    });
    for (let i = 0; i < 6; i++) {
      const page = await api.search("Patient", { _count: 1 });
      expect(page.resourceType).toBe("Bundle");
    }
    expect(statuses).toContain(429);
    expect(statuses.filter((status) => status === 200)).toHaveLength(6);
  });

  it("streams a bulk export to the end", async () => {
    const api = client();
    const family = `${run}-export`;
    for (let i = 0; i < 3; i++) await api.create(patient(family));
    const total = (await api.search("Patient", { _summary: "count", _total: "accurate" })).total;
    const job = await api.bulkExport({ types: ["Patient"] });
    const progress: string[] = [];
    let count = 0;
    let mine = 0;
    for await (const resource of job.resources({ onProgress: (p) => progress.push(p), defaultIntervalMs: 200 })) {
      expect(resource.resourceType).toBe("Patient");
      count++;
      if ((resource as Patient).name?.[0]?.family === family) mine++;
    }
    expect(count).toBe(total);
    expect(mine).toBe(3);
    await job.cancel();
  });
});
