import type {
  Bundle,
  CapabilityStatement,
  FhirResource,
  OperationOutcome,
  Reference,
} from "fhir/r4";

import { BulkExport, type BulkExportOptions } from "./export.js";
import { ClinikError, describeOutcome, isOperationOutcome } from "./errors.js";
import {
  backoffMs,
  parseRateLimit,
  parseRetryAfter,
  randomId,
  type RateLimitState,
  type SearchParams,
  sleep,
  toSearchParams,
} from "./http.js";

export type ResourceType = FhirResource["resourceType"];
/** The resource interface for a resource type name: `ResourceOf<"Patient">` is `Patient`. */
export type ResourceOf<K extends ResourceType> = Extract<FhirResource, { resourceType: K }>;

export interface ClinikClientOptions {
  /** An API key (`ck_live_…`). Leave it out when baseUrl is your own backend proxy. */
  apiKey?: string;
  /** The FHIR base, e.g. `https://api.clinikapi.com/fhir/R4`. */
  baseUrl: string;
  /** A fetch implementation (default: the global fetch of Node 18+ or the browser). */
  fetch?: typeof fetch;
  /** Time limit of one attempt, in milliseconds (default 30,000). */
  timeoutMs?: number;
  /** Retries after the first attempt on network errors, timeouts, 429 and 503 (default 2). */
  maxRetries?: number;
  /** The longest wait the client accepts from Retry-After before giving up (default 60 s). */
  maxRetryDelayMs?: number;
  /** Extra headers sent with every request (never put the API key here). */
  headers?: Record<string, string>;
}

export interface RequestOptions {
  signal?: AbortSignal;
  headers?: Record<string, string>;
}

export interface CreateOptions extends RequestOptions {
  /** Conditional create: search criteria; an existing match is returned instead. */
  ifNoneExist?: SearchParams;
  /** Reuse a key to make a retry of your own replay the first outcome (default: random). */
  idempotencyKey?: string;
}

export interface UpdateOptions extends RequestOptions {
  /** Only update if the current version is this one (If-Match); true: the resource's own. */
  ifMatch?: string | true;
}

export type JsonPatchOperation =
  | { op: "add" | "replace" | "test"; path: string; value: unknown }
  | { op: "remove"; path: string }
  | { op: "move" | "copy"; from: string; path: string };

export interface SearchOptions extends RequestOptions {
  /** POST [type]/_search with a form body: long criteria, or values kept out of URLs. */
  method?: "GET" | "POST";
}

interface Call {
  method: string;
  path: string;
  /** What to name in errors: an operation and type, never ids or query values. */
  label: string;
  query?: URLSearchParams;
  body?: unknown;
  form?: URLSearchParams;
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
  /** May this call be sent again after a network error or timeout? */
  replayable: boolean;
  /** An absolute URL under the base (paging links) instead of path. */
  url?: string;
}

const FHIR_JSON = "application/fhir+json";

/** A ClinikAPI FHIR R4 client: typed, retrying safely, never leaking the key. */
export class ClinikClient {
  readonly baseUrl: string;
  private readonly apiKey: string | undefined;
  private readonly fetchImpl: typeof fetch;
  private readonly timeoutMs: number;
  private readonly maxRetries: number;
  private readonly maxRetryDelayMs: number;
  private readonly extraHeaders: Record<string, string>;
  private lastRateLimit: RateLimitState | undefined;

  constructor(options: ClinikClientOptions) {
    if (!options.baseUrl) throw new TypeError("ClinikClient needs a baseUrl");
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    const fetchImpl = options.fetch ?? globalThis.fetch;
    if (!fetchImpl) throw new TypeError("No fetch available: pass options.fetch");
    this.fetchImpl = fetchImpl.bind(globalThis);
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.maxRetries = options.maxRetries ?? 2;
    this.maxRetryDelayMs = options.maxRetryDelayMs ?? 60_000;
    this.extraHeaders = { ...options.headers };
  }

  /** The tightest rate-limit bucket of the last answer (from the RateLimit header). */
  get rateLimit(): RateLimitState | undefined {
    return this.lastRateLimit;
  }

  // --- instance level -------------------------------------------------------------

  async create<T extends FhirResource>(resource: T, options: CreateOptions = {}): Promise<T> {
    const headers: Record<string, string> = {
      "Idempotency-Key": options.idempotencyKey ?? randomId(),
      Prefer: "return=representation",
      ...options.headers,
    };
    if (options.ifNoneExist !== undefined) {
      headers["If-None-Exist"] = toSearchParams(options.ifNoneExist).toString();
    }
    return this.send<T>({
      method: "POST",
      path: encodeURIComponent(resource.resourceType),
      label: `create ${resource.resourceType}`,
      body: resource,
      headers,
      signal: options.signal,
      replayable: true,
    });
  }

  async read<K extends ResourceType>(
    type: K,
    id: string,
    options: RequestOptions = {},
  ): Promise<ResourceOf<K>> {
    return this.send({
      method: "GET",
      path: `${type}/${encodeURIComponent(id)}`,
      label: `read ${type}`,
      ...this.common(options),
    });
  }

  async vread<K extends ResourceType>(
    type: K,
    id: string,
    versionId: string,
    options: RequestOptions = {},
  ): Promise<ResourceOf<K>> {
    return this.send({
      method: "GET",
      path: `${type}/${encodeURIComponent(id)}/_history/${encodeURIComponent(versionId)}`,
      label: `vread ${type}`,
      ...this.common(options),
    });
  }

  /** Reads what a Reference points at (`Patient/123` or an absolute URL under the base). */
  async readReference<T extends FhirResource = FhirResource>(
    reference: Reference | string,
    options: RequestOptions = {},
  ): Promise<T> {
    const target = typeof reference === "string" ? reference : reference.reference;
    if (!target) throw new TypeError("The reference has no reference string");
    let relative = target;
    if (/^https?:\/\//.test(target)) {
      if (!target.startsWith(`${this.baseUrl}/`)) {
        throw new TypeError("Only references to this server can be read");
      }
      relative = target.slice(this.baseUrl.length + 1);
    }
    const [type, id, history, version] = relative.split("/");
    if (!type || !id || !/^[A-Z][A-Za-z]+$/.test(type) || (history && history !== "_history")) {
      throw new TypeError("Not a literal reference of the form Type/id");
    }
    const resourceType = type as ResourceType;
    const read = version
      ? this.vread(resourceType, id, version, options)
      : this.read(resourceType, id, options);
    return (await read) as unknown as T;
  }

  async update<T extends FhirResource>(resource: T, options: UpdateOptions = {}): Promise<T> {
    if (!resource.id) throw new TypeError("update needs resource.id (use create for new ones)");
    return this.send<T>({
      method: "PUT",
      path: `${resource.resourceType}/${encodeURIComponent(resource.id)}`,
      label: `update ${resource.resourceType}`,
      body: resource,
      headers: { ...this.ifMatch(resource, options.ifMatch), ...options.headers },
      signal: options.signal,
      replayable: true,
    });
  }

  /** Conditional update: PUT [type]?criteria (creates when nothing matches). */
  async conditionalUpdate<T extends FhirResource>(
    resource: T,
    criteria: SearchParams,
    options: RequestOptions = {},
  ): Promise<T> {
    return this.send<T>({
      method: "PUT",
      path: resource.resourceType,
      label: `conditional update ${resource.resourceType}`,
      query: toSearchParams(criteria),
      body: resource,
      ...this.common(options),
    });
  }

  /** JSON Patch (RFC 6902). Not retried after a network error: a patch may not be idempotent. */
  async patch<K extends ResourceType>(
    type: K,
    id: string,
    operations: JsonPatchOperation[],
    options: UpdateOptions = {},
  ): Promise<ResourceOf<K>> {
    const ifMatch =
      typeof options.ifMatch === "string" ? { "If-Match": weakETag(options.ifMatch) } : {};
    return this.send({
      method: "PATCH",
      path: `${type}/${encodeURIComponent(id)}`,
      label: `patch ${type}`,
      body: operations,
      headers: { "Content-Type": "application/json-patch+json", ...ifMatch, ...options.headers },
      signal: options.signal,
      replayable: false,
    });
  }

  async delete(type: ResourceType, id: string, options: RequestOptions = {}): Promise<void> {
    await this.send({
      method: "DELETE",
      path: `${type}/${encodeURIComponent(id)}`,
      label: `delete ${type}`,
      ...this.common(options),
    });
  }

  /** Conditional delete: DELETE [type]?criteria, every match. */
  async conditionalDelete(
    type: ResourceType,
    criteria: SearchParams,
    options: RequestOptions = {},
  ): Promise<void> {
    await this.send({
      method: "DELETE",
      path: type,
      label: `conditional delete ${type}`,
      query: toSearchParams(criteria),
      ...this.common(options),
    });
  }

  /** History of an instance, a type, or the whole organization (no arguments). */
  async history(
    type?: ResourceType,
    id?: string,
    params?: SearchParams,
    options: RequestOptions = {},
  ): Promise<Bundle> {
    const path = [type, id === undefined ? undefined : encodeURIComponent(id), "_history"]
      .filter(Boolean)
      .join("/");
    return this.send({
      method: "GET",
      path,
      label: `history ${type ?? "system"}`,
      query: toSearchParams(params),
      ...this.common(options),
    });
  }

  // --- search ---------------------------------------------------------------------

  async search<K extends ResourceType>(
    type: K,
    params?: SearchParams,
    options: SearchOptions = {},
  ): Promise<Bundle<ResourceOf<K>>> {
    const query = toSearchParams(params);
    if (options.method === "POST") {
      return this.send({
        method: "POST",
        path: `${type}/_search`,
        label: `search ${type}`,
        form: query,
        ...this.common(options),
      });
    }
    return this.send({ method: "GET", path: type, label: `search ${type}`, query, ...this.common(options) });
  }

  /** Every matching resource of every page, fetched page by page as you iterate. */
  async *searchAll<K extends ResourceType>(
    type: K,
    params?: SearchParams,
    options: SearchOptions = {},
  ): AsyncGenerator<ResourceOf<K>, void, undefined> {
    let page: Bundle = await this.search(type, params, options);
    for (;;) {
      for (const entry of page.entry ?? []) {
        if (entry.resource?.resourceType === type && entry.search?.mode !== "include") {
          yield entry.resource as ResourceOf<K>;
        }
      }
      const next = page.link?.find((link) => link.relation === "next")?.url;
      if (!next) return;
      page = await this.send({
        method: "GET",
        path: "",
        url: this.ownUrl(next),
        label: `search ${type}`,
        ...this.common(options),
      });
    }
  }

  // --- bundles and the rest -------------------------------------------------------

  /** POST a batch or transaction Bundle (see BundleBuilder) to the base. */
  async bundle(bundle: Bundle, options: CreateOptions = {}): Promise<Bundle> {
    return this.send({
      method: "POST",
      path: "",
      label: `${bundle.type ?? "bundle"}`,
      body: bundle,
      headers: { "Idempotency-Key": options.idempotencyKey ?? randomId(), ...options.headers },
      signal: options.signal,
      replayable: true,
    });
  }

  async capabilities(options: RequestOptions = {}): Promise<CapabilityStatement> {
    return this.send({ method: "GET", path: "metadata", label: "metadata", ...this.common(options) });
  }

  /** Starts a bulk export; see BulkExport for polling, streaming and cancelling. */
  async bulkExport(options: BulkExportOptions = {}): Promise<BulkExport> {
    return BulkExport.start(this, options);
  }

  // --- the transport ---------------------------------------------------------------

  /** A raw call for what the typed methods do not cover (used by BulkExport too). */
  async raw(
    method: string,
    pathOrUrl: string,
    init: {
      query?: URLSearchParams;
      body?: unknown;
      headers?: Record<string, string>;
      signal?: AbortSignal | undefined;
      label?: string;
      replayable?: boolean;
    } = {},
  ): Promise<Response> {
    const absolute = /^https?:\/\//.test(pathOrUrl);
    return this.fetchWithRetries({
      method,
      path: absolute ? "" : pathOrUrl,
      label: init.label ?? method.toLowerCase(),
      replayable: init.replayable ?? method !== "POST",
      ...(absolute ? { url: this.ownUrl(pathOrUrl) } : {}),
      ...(init.query ? { query: init.query } : {}),
      ...(init.body !== undefined ? { body: init.body } : {}),
      ...(init.headers ? { headers: init.headers } : {}),
      signal: init.signal,
    });
  }

  private common(options: RequestOptions): Pick<Call, "headers" | "signal" | "replayable"> {
    return { headers: { ...options.headers }, signal: options.signal, replayable: true };
  }

  private ifMatch(resource: FhirResource, ifMatch: string | true | undefined) {
    if (ifMatch === undefined) return {};
    const version = ifMatch === true ? resource.meta?.versionId : ifMatch;
    if (!version) throw new TypeError("ifMatch: true needs resource.meta.versionId");
    return { "If-Match": weakETag(version) };
  }

  /** Paging links must point back at this server: the key is never sent elsewhere. */
  private ownUrl(url: string): string {
    const base = new URL(`${this.baseUrl}/`);
    const target = new URL(url, base);
    if (target.origin !== base.origin || !target.pathname.startsWith(base.pathname)) {
      throw new ClinikError("The server sent a link to another host; not followed", { status: 0 });
    }
    return target.toString();
  }

  private async send<T>(call: Call): Promise<T> {
    const response = await this.fetchWithRetries(call);
    if (response.status === 204) return undefined as T;
    const text = await response.text();
    return (text ? JSON.parse(text) : undefined) as T;
  }

  private async fetchWithRetries(call: Call): Promise<Response> {
    let url = call.url ?? `${this.baseUrl}/${call.path}`.replace(/\/$/, "");
    if (call.query && [...call.query.keys()].length > 0) url += `?${call.query.toString()}`;
    const headers: Record<string, string> = { Accept: FHIR_JSON, ...this.extraHeaders };
    let body: string | undefined;
    if (call.form) {
      headers["Content-Type"] = "application/x-www-form-urlencoded";
      body = call.form.toString();
    } else if (call.body !== undefined) {
      headers["Content-Type"] = FHIR_JSON;
      body = JSON.stringify(call.body);
    }
    Object.assign(headers, call.headers);
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;

    for (let attempt = 0; ; attempt++) {
      let response: Response;
      try {
        response = await this.attempt(url, call, headers, body);
      } catch (error) {
        if (call.signal?.aborted) throw error;
        const timedOut = error instanceof ClinikError;
        const failure =
          error instanceof ClinikError
            ? error
            : new ClinikError(`${call.label}: network error`, { status: 0, cause: error });
        if (!call.replayable || attempt >= this.maxRetries) throw failure;
        await sleep(timedOut ? 0 : backoffMs(attempt), call.signal);
        continue;
      }
      this.lastRateLimit = parseRateLimit(response.headers.get("RateLimit")) ?? this.lastRateLimit;
      if (response.ok) return response;

      const retryAfter = parseRetryAfter(response.headers.get("Retry-After"));
      const retryable = response.status === 429 || response.status === 503;
      if (retryable && attempt < this.maxRetries) {
        const waitMs = this.retryDelayMs(response, retryAfter, attempt);
        if (waitMs <= this.maxRetryDelayMs) {
          await response.body?.cancel().catch(() => undefined);
          await sleep(waitMs, call.signal);
          continue;
        }
      }
      throw await this.errorFrom(response, call, retryAfter);
    }
  }

  private retryDelayMs(response: Response, retryAfter: number | undefined, attempt: number) {
    if (retryAfter !== undefined) return retryAfter * 1000;
    const limit = parseRateLimit(response.headers.get("RateLimit"));
    if (response.status === 429 && limit && limit.remaining <= 0) return limit.resetSeconds * 1000;
    return backoffMs(attempt);
  }

  private async attempt(
    url: string,
    call: Call,
    headers: Record<string, string>,
    body: string | undefined,
  ): Promise<Response> {
    const controller = new AbortController();
    const onAbort = () => controller.abort(call.signal?.reason);
    call.signal?.addEventListener("abort", onAbort, { once: true });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.timeoutMs);
    try {
      return await this.fetchImpl(url, {
        method: call.method,
        headers,
        ...(body === undefined ? {} : { body }),
        signal: controller.signal,
      });
    } catch (error) {
      if (timedOut) {
        throw new ClinikError(`${call.label}: no answer within ${this.timeoutMs} ms`, {
          status: 0,
        });
      }
      throw error;
    } finally {
      clearTimeout(timer);
      call.signal?.removeEventListener("abort", onAbort);
    }
  }

  private async errorFrom(
    response: Response,
    call: Call,
    retryAfterSeconds: number | undefined,
  ): Promise<ClinikError> {
    let outcome: OperationOutcome | undefined;
    try {
      const parsed: unknown = JSON.parse(await response.text());
      if (isOperationOutcome(parsed)) outcome = parsed;
    } catch {
      // not JSON: the status says enough
    }
    const detail = describeOutcome(outcome);
    return new ClinikError(
      `${call.label} failed with HTTP ${response.status}${detail ? `: ${detail}` : ""}`,
      {
        status: response.status,
        requestId: response.headers.get("X-Request-ID") ?? undefined,
        outcome,
        retryAfterSeconds,
      },
    );
  }
}

function weakETag(version: string): string {
  return version.startsWith("W/") ? version : `W/"${version}"`;
}

