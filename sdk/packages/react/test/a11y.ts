import axe from "axe-core";
import { expect } from "vitest";

/** Runs axe-core on a rendered container; fails with the violations' ids and targets. */
export async function expectAccessible(container: Element): Promise<void> {
  const results = await axe.run(container, {
    rules: { "color-contrast": { enabled: false } }, // jsdom does not lay out or paint
  });
  const found = results.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
  expect(found).toEqual([]);
}
