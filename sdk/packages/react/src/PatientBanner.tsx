import type { Patient } from "fhir/r4";

import { DateTimeDisplay, HumanNameDisplay } from "./display.js";
import { useResource } from "./hooks.js";
import { OperationOutcomeAlert } from "./OperationOutcomeAlert.js";

function age(birthDate: string | undefined, now = new Date()): number | undefined {
  if (!birthDate || birthDate.length < 10) return undefined;
  const born = new Date(`${birthDate}T00:00:00Z`);
  let years = now.getUTCFullYear() - born.getUTCFullYear();
  const before =
    now.getUTCMonth() < born.getUTCMonth() ||
    (now.getUTCMonth() === born.getUTCMonth() && now.getUTCDate() < born.getUTCDate());
  if (before) years -= 1;
  return years;
}

/** Name, sex, birth date and age, and the first identifier: the header of a chart. */
export function PatientBanner({ patient, patientId }: { patient?: Patient; patientId?: string }) {
  const loaded = useResource("Patient", patient ? undefined : patientId);
  const shown = patient ?? loaded.data;
  if (loaded.error) return <OperationOutcomeAlert error={loaded.error} />;
  if (!shown) return <div className="ck-banner" aria-busy="true">Loading patient…</div>;
  const years = age(shown.birthDate);
  const identifier = shown.identifier?.[0];
  return (
    <section className="ck-banner" aria-label="Patient">
      <h2 className="ck-banner-name">
        <HumanNameDisplay value={shown.name} />
      </h2>
      <dl className="ck-banner-facts">
        <div>
          <dt>Sex</dt>
          <dd>{shown.gender ?? "unknown"}</dd>
        </div>
        <div>
          <dt>Born</dt>
          <dd>
            <DateTimeDisplay value={shown.birthDate} />
            {years === undefined ? null : ` (${years} y)`}
          </dd>
        </div>
        {identifier?.value ? (
          <div>
            <dt>{identifier.type?.text ?? "Identifier"}</dt>
            <dd>{identifier.value}</dd>
          </div>
        ) : null}
      </dl>
    </section>
  );
}
