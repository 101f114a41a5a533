import type { CodeableConcept, HumanName, Quantity } from "fhir/r4";

/** "Given Family" (or the name's text), for the official/usual name first. */
export function formatHumanName(name: HumanName | undefined): string {
  if (!name) return "";
  if (name.text) return name.text;
  return [...(name.prefix ?? []), ...(name.given ?? []), name.family, ...(name.suffix ?? [])]
    .filter(Boolean)
    .join(" ");
}

export function preferredName(names: HumanName[] | undefined): HumanName | undefined {
  return names?.find((n) => n.use === "official") ?? names?.find((n) => n.use === "usual") ?? names?.[0];
}

export function HumanNameDisplay({ value }: { value: HumanName | HumanName[] | undefined }) {
  const name = Array.isArray(value) ? preferredName(value) : value;
  return <span className="ck-name">{formatHumanName(name) || "Unnamed"}</span>;
}

export function formatCodeableConcept(concept: CodeableConcept | undefined): string {
  if (!concept) return "";
  return concept.text ?? concept.coding?.find((c) => c.display)?.display ?? concept.coding?.[0]?.code ?? "";
}

export function CodeableConceptDisplay({ value }: { value: CodeableConcept | undefined }) {
  const coding = value?.coding?.[0];
  const title = coding ? [coding.system, coding.code].filter(Boolean).join("|") : undefined;
  return (
    <span className="ck-concept" {...(title ? { title } : {})}>
      {formatCodeableConcept(value)}
    </span>
  );
}

export function formatQuantity(quantity: Quantity | undefined, locale?: string): string {
  if (quantity?.value === undefined) return "";
  const number = new Intl.NumberFormat(locale, { maximumFractionDigits: 6 }).format(quantity.value);
  const unit = quantity.unit ?? quantity.code ?? "";
  return `${quantity.comparator ?? ""}${number}${unit ? ` ${unit}` : ""}`;
}

export function QuantityDisplay({ value, locale }: { value: Quantity | undefined; locale?: string }) {
  return <span className="ck-quantity">{formatQuantity(value, locale)}</span>;
}

/** A FHIR date/dateTime/instant in the reader's locale; partial dates stay partial. */
export function formatDateTime(value: string | undefined, locale?: string): string {
  if (!value) return "";
  if (/^\d{4}$/.test(value)) return value;
  if (/^\d{4}-\d{2}$/.test(value)) {
    return new Intl.DateTimeFormat(locale, { year: "numeric", month: "long", timeZone: "UTC" }).format(
      new Date(`${value}-01T00:00:00Z`),
    );
  }
  if (/^\d{4}-\d{2}-\d{2}$/.test(value)) {
    return new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeZone: "UTC" }).format(
      new Date(`${value}T00:00:00Z`),
    );
  }
  const date = new Date(value);
  return Number.isNaN(date.getTime())
    ? value
    : new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "short" }).format(date);
}

export function DateTimeDisplay({ value, locale }: { value: string | undefined; locale?: string }) {
  return (
    <time className="ck-datetime" {...(value ? { dateTime: value } : {})}>
      {formatDateTime(value, locale)}
    </time>
  );
}
