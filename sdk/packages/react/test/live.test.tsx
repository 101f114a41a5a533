/**
 * Hooks and components against the live ClinikAPI that `make test` starts
 * (tests/test_sdk.py); skipped, and saying so, without it.
 */
import { ClinikClient } from "@clinikapi/sdk";
import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import type { Patient } from "fhir/r4";
import type { ReactNode } from "react";
import { afterEach, beforeAll, describe, expect, it, vi } from "vitest";

import { ClinikProvider, PatientBanner, PatientForm, ResourceTable } from "../src/index.js";
import { expectAccessible } from "./a11y.js";

const BASE = process.env.CLINIK_BASE_URL;
const KEY = process.env.CLINIK_API_KEY;
const live = Boolean(BASE && KEY);
if (!live) console.warn("SKIPPED: the live component tests (set CLINIK_BASE_URL and CLINIK_API_KEY, or run `make test`)");

const family = `react-${Date.now().toString(36)}`;
const client = new ClinikClient({ baseUrl: BASE ?? "http://127.0.0.1:9", apiKey: KEY ?? "" });
const wrap = (node: ReactNode) => render(<ClinikProvider client={client}>{node}</ClinikProvider>);

describe.skipIf(!live)("components against a live server", () => {
  let first: Patient;
  beforeAll(async () => {
    for (let i = 0; i < 7; i++) {
      const created = await client.create({
        resourceType: "Patient",
        name: [{ family, given: [`P${i}`] }],
        birthDate: `19${50 + i}-01-0${1 + (i % 9)}`,
      });
      if (i === 0) first = created;
    }
  });
  afterEach(cleanup);

  it("ResourceTable pages and sorts a search", async () => {
    const onSelect = vi.fn();
    const { container } = wrap(
      <ResourceTable
        resourceType="Patient"
        caption="Patients"
        params={{ family }}
        pageSize={5}
        onSelect={onSelect}
        columns={[
          { header: "Given", render: (p) => p.name?.[0]?.given?.[0] ?? "" },
          { header: "Born", render: (p) => p.birthDate ?? "", sortParam: "birthdate" },
        ]}
      />,
    );
    await waitFor(() => expect(screen.getByRole("status").textContent).toBe("7 found"));
    expect(screen.getAllByRole("row")).toHaveLength(6);
    fireEvent.click(screen.getByRole("button", { name: /Born/ }));
    await waitFor(() => expect(screen.getAllByRole("row")[1]?.textContent).toContain("P0"));
    fireEvent.click(screen.getByRole("button", { name: /Born/ }));
    await waitFor(() => expect(screen.getAllByRole("row")[1]?.textContent).toContain("P6"));
    fireEvent.click(screen.getByRole("button", { name: "Next page" }));
    await waitFor(() => expect(screen.getAllByRole("row")).toHaveLength(3));
    fireEvent.keyDown(screen.getAllByRole("row")[1] as HTMLElement, { key: "Enter" });
    expect(onSelect).toHaveBeenCalledTimes(1);
    await expectAccessible(container);
  });

  it("PatientBanner loads a patient by id", async () => {
    wrap(<PatientBanner patientId={first.id ?? ""} />);
    await waitFor(() => expect(screen.getByRole("heading").textContent).toBe(`P0 ${family}`));
  });

  it("PatientForm puts the server's validation error on the right field, then saves", async () => {
    const saved = vi.fn();
    const { container } = wrap(<PatientForm patient={first} onSaved={saved} />);
    fireEvent.change(screen.getByLabelText("Birth date"), { target: { value: "1950-13-45" } });
    fireEvent.click(screen.getByRole("button", { name: "Save changes" }));
    const field = screen.getByLabelText("Birth date");
    await waitFor(() => expect(field.getAttribute("aria-invalid")).toBe("true"));
    const message = document.getElementById(field.getAttribute("aria-describedby") ?? "");
    expect(message?.textContent).toBeTruthy();
    expect(screen.getByLabelText("Family name").getAttribute("aria-invalid")).toBe("false");
    await expectAccessible(container);

    fireEvent.change(field, { target: { value: "1950-12-31" } });
    fireEvent.click(screen.getByRole("button", { name: "Save changes" }));
    await waitFor(() => expect(saved).toHaveBeenCalledTimes(1));
    expect((await client.read("Patient", first.id ?? "")).birthDate).toBe("1950-12-31");
  });
});
