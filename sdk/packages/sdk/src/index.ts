export {
  ClinikClient,
  type ClinikClientOptions,
  type CreateOptions,
  type JsonPatchOperation,
  type RequestOptions,
  type ResourceOf,
  type ResourceType,
  type SearchOptions,
  type UpdateOptions,
} from "./client.js";
export { BundleBuilder } from "./bundle.js";
export { ClinikError, describeOutcome, isOperationOutcome } from "./errors.js";
export {
  BulkExport,
  type BulkExportOptions,
  type ExportManifest,
  parseNdjson,
  type WaitOptions,
} from "./export.js";
export { parseRateLimit, type RateLimitState, type SearchParams, toSearchParams } from "./http.js";
