import type { OperationOutcome } from "fhir/r4";

/**
 * Every failure of a ClinikAPI call: an HTTP error answer (status > 0, with the
 * server's OperationOutcome when it sent one), a network failure or a timeout
 * (status 0). The message never contains the API key, the request body or query.
 */
export class ClinikError extends Error {
  readonly status: number;
  readonly requestId: string | undefined;
  readonly outcome: OperationOutcome | undefined;
  readonly retryAfterSeconds: number | undefined;

  constructor(
    message: string,
    options: {
      status: number;
      requestId?: string | undefined;
      outcome?: OperationOutcome | undefined;
      retryAfterSeconds?: number | undefined;
      cause?: unknown;
    },
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "ClinikError";
    this.status = options.status;
    this.requestId = options.requestId;
    this.outcome = options.outcome;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }

  /** The issues of the OperationOutcome, or none. */
  get issues(): NonNullable<OperationOutcome["issue"]> {
    return this.outcome?.issue ?? [];
  }

  /** True for a 404 or 410: the resource does not exist (or is another tenant's). */
  get isNotFound(): boolean {
    return this.status === 404 || this.status === 410;
  }
}

export function isOperationOutcome(value: unknown): value is OperationOutcome {
  return (
    typeof value === "object" &&
    value !== null &&
    (value as { resourceType?: unknown }).resourceType === "OperationOutcome"
  );
}

/** A one-line description of an OperationOutcome's issues, for error messages. */
export function describeOutcome(outcome: OperationOutcome | undefined): string {
  const texts = (outcome?.issue ?? [])
    .map((issue) => issue.diagnostics ?? issue.details?.text ?? issue.code)
    .filter((text): text is string => typeof text === "string" && text.length > 0);
  return texts.join("; ");
}
