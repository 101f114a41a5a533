import type { FhirResource } from "fhir/r4";

import type { ClinikClient } from "./client.js";
import { ClinikError } from "./errors.js";
import { parseRetryAfter, sleep } from "./http.js";

export interface BulkExportOptions {
  /** Everything of the organization (default), its patients' compartments, or a Group's. */
  level?: "system" | "patient" | { group: string };
  types?: string[];
  since?: Date | string;
  /** Bulk Data `_typeFilter` queries, e.g. `Observation?status=final`. */
  typeFilter?: string[];
  signal?: AbortSignal;
}

export interface ExportManifest {
  transactionTime: string;
  request: string;
  requiresAccessToken: boolean;
  output: { type: string; url: string; count?: number }[];
  error: { type: string; url: string }[];
}

export interface WaitOptions {
  /** Called after every poll with the server's X-Progress text while it runs. */
  onProgress?: (progress: string) => void;
  signal?: AbortSignal;
  /** Poll interval when the server sends no Retry-After (default 2 s). */
  defaultIntervalMs?: number;
}

/** A bulk export job: poll it to completion, stream its files, or cancel it. */
export class BulkExport {
  private constructor(
    private readonly client: ClinikClient,
    /** The status URL (Content-Location of the kick-off). */
    readonly statusUrl: string,
  ) {}

  static async start(client: ClinikClient, options: BulkExportOptions): Promise<BulkExport> {
    const level = options.level ?? "system";
    const path =
      level === "system"
        ? "$export"
        : level === "patient"
          ? "Patient/$export"
          : `Group/${encodeURIComponent(level.group)}/$export`;
    const query = new URLSearchParams();
    if (options.types?.length) query.set("_type", options.types.join(","));
    if (options.since) {
      query.set("_since", options.since instanceof Date ? options.since.toISOString() : options.since);
    }
    for (const filter of options.typeFilter ?? []) query.append("_typeFilter", filter);
    const response = await client.raw("GET", path, {
      query,
      headers: { Prefer: "respond-async", Accept: "application/fhir+json" },
      signal: options.signal,
      label: "export kick-off",
    });
    await response.body?.cancel().catch(() => undefined);
    const location = response.headers.get("Content-Location");
    if (response.status !== 202 || !location) {
      throw new ClinikError(`export kick-off answered HTTP ${response.status} without a job`, {
        status: response.status,
      });
    }
    return new BulkExport(client, location);
  }

  /** Polls until the export is complete and returns its manifest. */
  async wait(options: WaitOptions = {}): Promise<ExportManifest> {
    for (;;) {
      const response = await this.client.raw("GET", this.statusUrl, {
        signal: options.signal,
        label: "export status",
      });
      if (response.status === 200) return (await response.json()) as ExportManifest;
      await response.body?.cancel().catch(() => undefined);
      const progress = response.headers.get("X-Progress");
      if (progress) options.onProgress?.(progress);
      const waitSeconds = parseRetryAfter(response.headers.get("Retry-After"));
      await sleep(
        waitSeconds === undefined ? (options.defaultIntervalMs ?? 2_000) : waitSeconds * 1000,
        options.signal,
      );
    }
  }

  /** Cancels the export (or deletes a finished one's files). */
  async cancel(signal?: AbortSignal): Promise<void> {
    const response = await this.client.raw("DELETE", this.statusUrl, {
      signal,
      label: "export cancel",
    });
    await response.body?.cancel().catch(() => undefined);
  }

  /** Streams the resources of one output file, parsed line by line as they arrive. */
  async *file<T extends FhirResource = FhirResource>(
    url: string,
    signal?: AbortSignal,
  ): AsyncGenerator<T, void, undefined> {
    const response = await this.client.raw("GET", url, {
      headers: { Accept: "application/fhir+ndjson" },
      signal,
      label: "export file",
    });
    yield* parseNdjson<T>(response);
  }

  /** Waits for the export, then streams every resource of every output file. */
  async *resources(options: WaitOptions = {}): AsyncGenerator<FhirResource, void, undefined> {
    const manifest = await this.wait(options);
    for (const output of manifest.output) yield* this.file(output.url, options.signal);
  }
}

/** Parses an NDJSON response body incrementally: memory bounded by the longest line. */
export async function* parseNdjson<T>(response: Response): AsyncGenerator<T, void, undefined> {
  if (!response.body) return;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (value) buffer += value;
      let newline = buffer.indexOf("\n");
      while (newline >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) yield JSON.parse(line) as T;
        newline = buffer.indexOf("\n");
      }
      if (done) break;
    }
    if (buffer.trim()) yield JSON.parse(buffer) as T;
  } finally {
    reader.releaseLock();
  }
}
