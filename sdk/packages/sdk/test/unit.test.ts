import { describe, expect, it } from "vitest";

import {
  BundleBuilder,
  ClinikClient,
  ClinikError,
  parseNdjson,
  parseRateLimit,
  toSearchParams,
} from "../src/index.js";

describe("toSearchParams", () => {
  it("repeats arrays, formats dates and drops undefined", () => {
    const params = toSearchParams({
      family: "Chalmers",
      _count: 10,
      date: [`ge2020-01-01`, `le2021-01-01`],
      _lastUpdated: new Date("2024-01-02T03:04:05Z"),
      missing: undefined,
    });
    expect(params.toString()).toBe(
      "family=Chalmers&_count=10&date=ge2020-01-01&date=le2021-01-01&_lastUpdated=2024-01-02T03%3A04%3A05.000Z",
    );
  });
});

describe("parseRateLimit", () => {
  it("returns the tightest bucket", () => {
    expect(parseRateLimit('"org";r=599;t=60, "key";r=3;t=7')).toEqual({
      policy: "key",
      remaining: 3,
      resetSeconds: 7,
    });
    expect(parseRateLimit(null)).toBeUndefined();
    expect(parseRateLimit("garbage")).toBeUndefined();
  });
});

describe("BundleBuilder", () => {
  it("links entries through urn:uuid references", () => {
    const tx = new BundleBuilder("transaction");
    const patient = tx.create({ resourceType: "Patient" }, { ifNoneExist: { identifier: "urn:mrn|1" } });
    tx.create({ resourceType: "Observation", status: "final", code: { text: "x" }, subject: patient });
    tx.delete("Patient", "old");
    const bundle = tx.build();
    expect(bundle.type).toBe("transaction");
    expect(bundle.entry).toHaveLength(3);
    expect(patient.reference).toMatch(/^urn:uuid:[0-9a-f-]{36}$/);
    expect(bundle.entry?.[0]?.fullUrl).toBe(patient.reference);
    expect(bundle.entry?.[0]?.request?.ifNoneExist).toBe("identifier=urn%3Amrn%7C1");
    expect(bundle.entry?.[2]?.request).toEqual({ method: "DELETE", url: "Patient/old" });
  });
});

describe("parseNdjson", () => {
  it("parses lines split across chunks", async () => {
    const chunks = ['{"a":1}\n{"a"', ':2}\n\n{"a":3}'];
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const chunk of chunks) controller.enqueue(new TextEncoder().encode(chunk));
        controller.close();
      },
    });
    const seen: unknown[] = [];
    for await (const item of parseNdjson(new Response(body))) seen.push(item);
    expect(seen).toEqual([{ a: 1 }, { a: 2 }, { a: 3 }]);
  });
});

describe("the API key", () => {
  const key = "ck_live_secret_never_to_be_seen";

  it("never appears in an error message", async () => {
    const client = new ClinikClient({
      apiKey: key,
      baseUrl: "http://127.0.0.1:9/fhir/R4",
      maxRetries: 0,
      timeoutMs: 2_000,
    });
    const error = await client.read("Patient", "x").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ClinikError);
    expect((error as ClinikError).status).toBe(0);
    expect(String(error)).not.toContain(key);
    expect(JSON.stringify(error)).not.toContain(key);
  });

  it("is not sent to another host named in a paging link", async () => {
    const sentTo: string[] = [];
    const fakeServer: typeof fetch = async (input) => {
      sentTo.push(String(input));
      return new Response(
        JSON.stringify({
          resourceType: "Bundle",
          type: "searchset",
          entry: [],
          link: [{ relation: "next", url: "https://evil.example/fhir/R4/Patient?page=2" }],
        }),
        { status: 200, headers: { "Content-Type": "application/fhir+json" } },
      );
    };
    const client = new ClinikClient({ apiKey: key, baseUrl: "https://api.test/fhir/R4", fetch: fakeServer });
    const iterate = async () => {
      for await (const _ of client.searchAll("Patient")) {
        // nothing
      }
    };
    await expect(iterate()).rejects.toThrow(/another host/);
    expect(sentTo).toEqual(["https://api.test/fhir/R4/Patient"]);
  });
});
