/** Small HTTP helpers: retry timing, rate-limit headers, ids. No dependencies. */

export interface RateLimitState {
  /** The tightest bucket: requests left in it and seconds until it is full again. */
  remaining: number;
  resetSeconds: number;
  /** The bucket's name as the server sends it ("org", "key", "quota", ...). */
  policy: string;
}

/** Parses `RateLimit: "org";r=599;t=60, "key";r=10;t=4` into its tightest bucket. */
export function parseRateLimit(header: string | null): RateLimitState | undefined {
  if (!header) return undefined;
  let tightest: RateLimitState | undefined;
  for (const item of header.split(",")) {
    const [rawName, ...params] = item.split(";").map((part) => part.trim());
    const values: Record<string, number> = {};
    for (const param of params) {
      const [key, value] = param.split("=");
      const number = Number(value);
      if (key && Number.isFinite(number)) values[key] = number;
    }
    if (values.r === undefined) continue;
    const state = {
      policy: (rawName ?? "").replace(/"/g, ""),
      remaining: values.r,
      resetSeconds: values.t ?? 0,
    };
    if (!tightest || state.remaining < tightest.remaining) tightest = state;
  }
  return tightest;
}

/** Retry-After as seconds (a delta or an HTTP date), or undefined. */
export function parseRetryAfter(header: string | null, now: number = Date.now()): number | undefined {
  if (!header) return undefined;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(header);
  return Number.isNaN(date) ? undefined : Math.max(0, (date - now) / 1000);
}

/** Exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... capped. */
export function backoffMs(attempt: number, capMs = 8_000): number {
  const ceiling = Math.min(capMs, 500 * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

export function randomId(): string {
  const webCrypto = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (webCrypto?.randomUUID) return webCrypto.randomUUID();
  // Only for uniqueness (idempotency keys, urn:uuid placeholders), never for secrets.
  const hex = Array.from({ length: 32 }, () => Math.floor(Math.random() * 16).toString(16));
  hex[12] = "4";
  hex[16] = ((parseInt(hex[16] ?? "0", 16) & 0x3) | 0x8).toString(16);
  const s = hex.join("");
  return `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20)}`;
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export type SearchParams =
  | URLSearchParams
  | Record<string, string | number | boolean | Date | ReadonlyArray<string | number> | undefined>;

/** A search parameter object (or URLSearchParams) as a URLSearchParams; arrays repeat. */
export function toSearchParams(params: SearchParams | undefined): URLSearchParams {
  if (params instanceof URLSearchParams) return new URLSearchParams(params);
  const out = new URLSearchParams();
  for (const [name, value] of Object.entries(params ?? {})) {
    if (value === undefined) continue;
    const values = Array.isArray(value) ? value : [value];
    for (const item of values) {
      out.append(name, item instanceof Date ? item.toISOString() : String(item));
    }
  }
  return out;
}
