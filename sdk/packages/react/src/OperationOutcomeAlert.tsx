import { ClinikError } from "@clinikapi/sdk";
import type { OperationOutcome } from "fhir/r4";

/** The issues of an OperationOutcome (or a ClinikError) as an accessible alert. */
export function OperationOutcomeAlert({
  outcome,
  error,
}: {
  outcome?: OperationOutcome | undefined;
  error?: Error | undefined;
}) {
  const source = outcome ?? (error instanceof ClinikError ? error.outcome : undefined);
  const issues = source?.issue ?? [];
  if (!issues.length && !error) return null;
  return (
    <div role="alert" className="ck-alert">
      {issues.length ? (
        <ul>
          {issues.map((issue, index) => (
            <li key={index} className={`ck-alert-${issue.severity}`}>
              {issue.diagnostics ?? issue.details?.text ?? issue.code}
            </li>
          ))}
        </ul>
      ) : (
        <p>{error?.message}</p>
      )}
    </div>
  );
}
