import type { Observation, Quantity } from "fhir/r4";
import { useId } from "react";

import { formatCodeableConcept, formatDateTime, formatQuantity } from "./display.js";
import { useSearch } from "./hooks.js";
import { OperationOutcomeAlert } from "./OperationOutcomeAlert.js";

/** UCUM conversions to a common unit, for values recorded in more than one unit. */
const CONVERSIONS: Record<string, { to: string; factor: number; offset?: number }> = {
  "[lb_av]": { to: "kg", factor: 0.45359237 },
  g: { to: "kg", factor: 0.001 },
  "[in_i]": { to: "cm", factor: 2.54 },
  m: { to: "cm", factor: 100 },
  "[degF]": { to: "Cel", factor: 5 / 9, offset: -32 },
};

interface Point {
  time: number;
  when: string;
  value: number;
}

function unitOf(quantity: Quantity): string {
  return quantity.code ?? quantity.unit ?? "";
}

/** Points in the unit most observations use; others converted when UCUM allows. */
export function chartPoints(observations: Observation[]): { unit: string; label: string; points: Point[]; skipped: number } {
  const withValues = observations.filter(
    (o) => o.valueQuantity?.value !== undefined && (o.effectiveDateTime ?? o.effectiveInstant ?? o.issued),
  );
  const counts = new Map<string, number>();
  for (const o of withValues) {
    const raw = unitOf(o.valueQuantity as Quantity);
    const unit = CONVERSIONS[raw]?.to ?? raw;
    counts.set(unit, (counts.get(unit) ?? 0) + 1);
  }
  const unit = [...counts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? "";
  const label = withValues.find((o) => unitOf(o.valueQuantity as Quantity) === unit)?.valueQuantity?.unit ?? unit;
  const points: Point[] = [];
  let skipped = observations.length - withValues.length;
  for (const o of withValues) {
    const quantity = o.valueQuantity as Quantity;
    const when = (o.effectiveDateTime ?? o.effectiveInstant ?? o.issued) as string;
    const raw = unitOf(quantity);
    let value = quantity.value as number;
    if (raw !== unit) {
      const conversion = CONVERSIONS[raw];
      if (!conversion || conversion.to !== unit) {
        skipped++;
        continue;
      }
      value = (value + (conversion.offset ?? 0)) * conversion.factor;
    }
    points.push({ time: Date.parse(when), when, value });
  }
  points.sort((a, b) => a.time - b.time);
  return { unit, label, points, skipped };
}

const WIDTH = 640;
const HEIGHT = 240;
const PAD = { left: 56, right: 16, top: 16, bottom: 36 };

/**
 * A vital sign or lab over time as an SVG line chart, with a data table for screen
 * readers. Give it observations, or a patient id and a code to search for.
 */
export function ObservationChart({
  observations,
  patientId,
  code,
  title,
}: {
  observations?: Observation[];
  patientId?: string;
  code?: string;
  title?: string;
}) {
  const fetched = useSearch(
    "Observation",
    { subject: `Patient/${patientId ?? ""}`, code, _sort: "date", _count: 100 },
    { enabled: !observations },
  );
  const titleId = useId();
  const data = observations ?? fetched.resources;
  const { unit, label, points, skipped } = chartPoints(data);
  const heading = title ?? (formatCodeableConcept(data[0]?.code) || "Observations");
  if (!observations && fetched.error) return <OperationOutcomeAlert error={fetched.error} />;
  if (!observations && fetched.loading) return <p aria-busy="true">Loading observations…</p>;
  if (!points.length) {
    return (
      <figure className="ck-chart">
        <figcaption>{heading}</figcaption>
        <p>No values to chart.</p>
      </figure>
    );
  }
  const times = points.map((p) => p.time);
  const values = points.map((p) => p.value);
  const [t0, t1] = [Math.min(...times), Math.max(...times)];
  let [v0, v1] = [Math.min(...values), Math.max(...values)];
  if (v0 === v1) [v0, v1] = [v0 - 1, v1 + 1];
  const x = (t: number) => PAD.left + (t1 === t0 ? 0.5 : (t - t0) / (t1 - t0)) * (WIDTH - PAD.left - PAD.right);
  const y = (v: number) => PAD.top + (1 - (v - v0) / (v1 - v0)) * (HEIGHT - PAD.top - PAD.bottom);
  const path = points.map((p, i) => `${i ? "L" : "M"}${x(p.time).toFixed(1)},${y(p.value).toFixed(1)}`).join(" ");
  const format = (v: number) => formatQuantity({ value: Number(v.toPrecision(4)), unit: label });
  return (
    <figure className="ck-chart">
      <figcaption id={titleId}>
        {heading} ({label})
      </figcaption>
      <svg viewBox={`0 0 ${WIDTH} ${HEIGHT}`} role="img" aria-labelledby={titleId}>
        <line className="ck-axis" x1={PAD.left} x2={PAD.left} y1={PAD.top} y2={HEIGHT - PAD.bottom} />
        <line className="ck-axis" x1={PAD.left} x2={WIDTH - PAD.right} y1={HEIGHT - PAD.bottom} y2={HEIGHT - PAD.bottom} />
        <text className="ck-tick" x={PAD.left - 6} y={y(v1)} textAnchor="end" dominantBaseline="middle">
          {format(v1)}
        </text>
        <text className="ck-tick" x={PAD.left - 6} y={y(v0)} textAnchor="end" dominantBaseline="middle">
          {format(v0)}
        </text>
        <text className="ck-tick" x={PAD.left} y={HEIGHT - 8}>
          {formatDateTime(points[0]?.when)}
        </text>
        <text className="ck-tick" x={WIDTH - PAD.right} y={HEIGHT - 8} textAnchor="end">
          {formatDateTime(points[points.length - 1]?.when)}
        </text>
        <path className="ck-line" d={path} fill="none" />
        {points.map((p) => (
          <circle key={`${p.time}-${p.value}`} className="ck-point" cx={x(p.time)} cy={y(p.value)} r={3.5}>
            <title>{`${formatDateTime(p.when)}: ${format(p.value)}`}</title>
          </circle>
        ))}
      </svg>
      <table className="ck-visually-hidden">
        <caption>
          {heading} in {label}
        </caption>
        <thead>
          <tr>
            <th scope="col">Time</th>
            <th scope="col">Value ({unit})</th>
          </tr>
        </thead>
        <tbody>
          {points.map((p) => (
            <tr key={`${p.time}-${p.value}`}>
              <td>{formatDateTime(p.when)}</td>
              <td>{format(p.value)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {skipped ? <p className="ck-note">{skipped} observation(s) without a chartable value not shown.</p> : null}
    </figure>
  );
}
