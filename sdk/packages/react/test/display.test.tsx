import { render, screen } from "@testing-library/react";
import type { Observation } from "fhir/r4";
import { describe, expect, it } from "vitest";

import {
  chartPoints,
  CodeableConceptDisplay,
  fieldOf,
  formatDateTime,
  formatQuantity,
  HumanNameDisplay,
  ObservationChart,
  OperationOutcomeAlert,
  PatientBanner,
} from "../src/index.js";
import { expectAccessible } from "./a11y.js";

function weight(when: string, value: number, code: string, unit: string): Observation {
  return {
    resourceType: "Observation",
    status: "final",
    code: { text: "Body weight", coding: [{ system: "http://loinc.org", code: "29463-7" }] },
    effectiveDateTime: when,
    valueQuantity: { value, unit, code, system: "http://unitsofmeasure.org" },
  };
}

describe("display components", () => {
  it("show names, concepts, quantities and dates", () => {
    render(
      <div>
        <HumanNameDisplay value={[{ use: "old", family: "Old" }, { use: "official", given: ["Ada"], family: "Lovelace" }]} />
        <CodeableConceptDisplay value={{ coding: [{ system: "http://loinc.org", code: "8867-4", display: "Heart rate" }] }} />
      </div>,
    );
    expect(screen.getByText("Ada Lovelace")).toBeTruthy();
    expect(screen.getByText("Heart rate").getAttribute("title")).toBe("http://loinc.org|8867-4");
    expect(formatQuantity({ value: 72.5, unit: "/min" }, "en-US")).toBe("72.5 /min");
    expect(formatDateTime("1974-12", "en-US")).toBe("December 1974");
    expect(formatDateTime("1974", "en-US")).toBe("1974");
    expect(formatDateTime("1974-12-25", "en-US")).toBe("Dec 25, 1974");
  });

  it("map OperationOutcome expressions to form fields", () => {
    expect(fieldOf("Patient.birthDate")).toBe("birthDate");
    expect(fieldOf("Patient.name[0].given[1]")).toBe("given");
    expect(fieldOf("Patient.name[0].family")).toBe("family");
    expect(fieldOf("Patient.telecom[0].value")).toBe("phone");
    expect(fieldOf("Patient.contact[0]")).toBeUndefined();
  });

  it("chart in the unit most values use, converting what UCUM allows", () => {
    const { unit, points, skipped } = chartPoints([
      weight("2024-01-01", 70, "kg", "kg"),
      weight("2024-02-01", 154.32, "[lb_av]", "lb"),
      weight("2024-03-01", 71, "kg", "kg"),
      weight("2024-04-01", 5, "{stone}", "st"),
    ]);
    expect(unit).toBe("kg");
    expect(points.map((p) => Number(p.value.toFixed(1)))).toEqual([70, 70, 71]);
    expect(skipped).toBe(1);
  });

  it("renders an accessible chart, banner and alert", async () => {
    const { container } = render(
      <main>
        <PatientBanner
          patient={{
            resourceType: "Patient",
            name: [{ given: ["Ada"], family: "Lovelace" }],
            gender: "female",
            birthDate: "1815-12-10",
            identifier: [{ value: "MRN-1" }],
          }}
        />
        <ObservationChart observations={[weight("2024-01-01", 70, "kg", "kg"), weight("2024-02-01", 72, "kg", "kg")]} />
        <OperationOutcomeAlert
          outcome={{ resourceType: "OperationOutcome", issue: [{ severity: "error", code: "invalid", diagnostics: "Bad date" }] }}
        />
      </main>,
    );
    expect(screen.getByRole("img", { name: /Body weight/ })).toBeTruthy();
    expect(screen.getByRole("alert").textContent).toContain("Bad date");
    expect(screen.getByRole("region", { name: "Patient" }).textContent).toContain("MRN-1");
    await expectAccessible(container);
  });
});
