import { ClinikError } from "@clinikapi/sdk";
import type { ContactPoint, OperationOutcomeIssue, Patient } from "fhir/r4";
import { type FormEvent, useId, useState } from "react";

import { preferredName } from "./display.js";
import { useCreate, useUpdate } from "./hooks.js";
import { OperationOutcomeAlert } from "./OperationOutcomeAlert.js";

type Field = "given" | "family" | "gender" | "birthDate" | "phone" | "email";

interface Values {
  given: string;
  family: string;
  gender: string;
  birthDate: string;
  phone: string;
  email: string;
}

/** Which form field an issue's FHIRPath expression points at. */
export function fieldOf(expression: string): Field | undefined {
  const path = expression.replace(/^Patient\./, "").replace(/\[\d+\]/g, "");
  if (path.startsWith("name.given")) return "given";
  if (path.startsWith("name")) return "family";
  if (path.startsWith("gender")) return "gender";
  if (path.startsWith("birthDate")) return "birthDate";
  if (path.startsWith("telecom")) return "phone";
  return undefined;
}

function telecom(patient: Patient | undefined, system: ContactPoint["system"]): string {
  return patient?.telecom?.find((t) => t.system === system)?.value ?? "";
}

function initial(patient: Patient | undefined): Values {
  const name = preferredName(patient?.name);
  return {
    given: name?.given?.join(" ") ?? "",
    family: name?.family ?? "",
    gender: patient?.gender ?? "",
    birthDate: patient?.birthDate ?? "",
    phone: telecom(patient, "phone"),
    email: telecom(patient, "email"),
  };
}

function toPatient(values: Values, base: Patient | undefined): Patient {
  const telecoms: ContactPoint[] = [
    ...(base?.telecom ?? []).filter((t) => t.system !== "phone" && t.system !== "email"),
    ...(values.phone ? [{ system: "phone" as const, value: values.phone }] : []),
    ...(values.email ? [{ system: "email" as const, value: values.email }] : []),
  ];
  const { gender: _g, birthDate: _b, telecom: _t, name: _n, ...rest } = base ?? { resourceType: "Patient" };
  return {
    ...rest,
    resourceType: "Patient",
    name: [{ use: "official", family: values.family, given: values.given.split(/\s+/).filter(Boolean) }],
    ...(values.gender ? { gender: values.gender as Patient["gender"] } : {}),
    ...(values.birthDate ? { birthDate: values.birthDate } : {}),
    ...(telecoms.length ? { telecom: telecoms } : {}),
  };
}

const LABELS: Record<Field, string> = {
  given: "Given names",
  family: "Family name",
  gender: "Sex",
  birthDate: "Birth date",
  phone: "Phone",
  email: "Email",
};

/**
 * Creates a Patient, or edits the one given. The server validates: each issue of its
 * OperationOutcome is shown on the field it names; the rest above the form.
 */
export function PatientForm({ patient, onSaved }: { patient?: Patient; onSaved?: (saved: Patient) => void }) {
  const [values, setValues] = useState<Values>(() => initial(patient));
  const [fieldErrors, setFieldErrors] = useState<Partial<Record<Field, string>>>({});
  const [otherIssues, setOtherIssues] = useState<OperationOutcomeIssue[]>([]);
  const [failure, setFailure] = useState<Error | undefined>(undefined);
  const create = useCreate<Patient>();
  const update = useUpdate<Patient>();
  const id = useId();
  const saving = create.loading || update.loading;

  async function submit(event: FormEvent) {
    event.preventDefault();
    setFieldErrors({});
    setOtherIssues([]);
    setFailure(undefined);
    const resource = toPatient(values, patient);
    try {
      const saved = patient?.id ? await update.mutate(resource) : await create.mutate(resource);
      onSaved?.(saved);
    } catch (error) {
      if (!(error instanceof ClinikError) || !error.issues.length) {
        setFailure(error instanceof Error ? error : new Error(String(error)));
        return;
      }
      const byField: Partial<Record<Field, string>> = {};
      const rest: OperationOutcomeIssue[] = [];
      for (const issue of error.issues) {
        const field = (issue.expression ?? []).map(fieldOf).find(Boolean);
        const text = issue.diagnostics ?? issue.details?.text ?? issue.code;
        if (field) byField[field] = byField[field] ? `${byField[field]} ${text}` : text;
        else rest.push(issue);
      }
      setFieldErrors(byField);
      setOtherIssues(rest);
    }
  }

  const input = (field: Field, type = "text") => {
    const error = fieldErrors[field];
    const inputId = `${id}-${field}`;
    return (
      <div className="ck-field">
        <label htmlFor={inputId}>{LABELS[field]}</label>
        {field === "gender" ? (
          <select
            id={inputId}
            value={values.gender}
            aria-invalid={Boolean(error)}
            {...(error ? { "aria-describedby": `${inputId}-error` } : {})}
            onChange={(e) => setValues({ ...values, gender: e.target.value })}
          >
            <option value="">Not given</option>
            <option value="female">Female</option>
            <option value="male">Male</option>
            <option value="other">Other</option>
            <option value="unknown">Unknown</option>
          </select>
        ) : (
          <input
            id={inputId}
            type={type}
            value={values[field]}
            aria-invalid={Boolean(error)}
            {...(error ? { "aria-describedby": `${inputId}-error` } : {})}
            onChange={(e) => setValues({ ...values, [field]: e.target.value })}
          />
        )}
        {error ? (
          <p id={`${inputId}-error`} className="ck-field-error">
            {error}
          </p>
        ) : null}
      </div>
    );
  };

  return (
    <form className="ck-form" onSubmit={submit} noValidate aria-label={patient?.id ? "Edit patient" : "New patient"}>
      {otherIssues.length ? (
        <OperationOutcomeAlert outcome={{ resourceType: "OperationOutcome", issue: otherIssues }} />
      ) : null}
      {failure ? <OperationOutcomeAlert error={failure} /> : null}
      {Object.keys(fieldErrors).length ? (
        <p role="alert" className="ck-alert">
          Please correct the highlighted fields.
        </p>
      ) : null}
      {input("given")}
      {input("family")}
      {input("gender")}
      {input("birthDate", "text")}
      {input("phone", "tel")}
      {input("email", "email")}
      <button type="submit" disabled={saving}>
        {saving ? "Saving…" : patient?.id ? "Save changes" : "Create patient"}
      </button>
    </form>
  );
}
