import type { Bundle, BundleEntry, FhirResource, Reference } from "fhir/r4";

import { randomId, type SearchParams, toSearchParams } from "./http.js";

/**
 * Builds a batch or transaction Bundle. `create` returns a `urn:uuid` Reference that
 * later entries can use: the server replaces it with the created resource's id.
 *
 *   const tx = new BundleBuilder("transaction");
 *   const patient = tx.create({ resourceType: "Patient", name: [{ family: "Lovelace" }] });
 *   tx.create({ resourceType: "Observation", status: "final", code: { text: "Weight" }, subject: patient });
 *   await client.bundle(tx.build());
 */
export class BundleBuilder {
  private readonly entries: BundleEntry[] = [];

  constructor(readonly type: "batch" | "transaction") {}

  get size(): number {
    return this.entries.length;
  }

  create(resource: FhirResource, options: { ifNoneExist?: SearchParams } = {}): Reference {
    const fullUrl = `urn:uuid:${randomId()}`;
    this.entries.push({
      fullUrl,
      resource,
      request: {
        method: "POST",
        url: resource.resourceType,
        ...(options.ifNoneExist === undefined
          ? {}
          : { ifNoneExist: toSearchParams(options.ifNoneExist).toString() }),
      },
    });
    return { reference: fullUrl, type: resource.resourceType };
  }

  update(resource: FhirResource, options: { ifMatch?: string } = {}): this {
    if (!resource.id) throw new TypeError("update needs resource.id");
    this.entries.push({
      fullUrl: `${resource.resourceType}/${resource.id}`,
      resource,
      request: {
        method: "PUT",
        url: `${resource.resourceType}/${encodeURIComponent(resource.id)}`,
        ...(options.ifMatch === undefined ? {} : { ifMatch: `W/"${options.ifMatch}"` }),
      },
    });
    return this;
  }

  conditionalUpdate(resource: FhirResource, criteria: SearchParams): this {
    this.entries.push({
      resource,
      request: { method: "PUT", url: `${resource.resourceType}?${toSearchParams(criteria)}` },
    });
    return this;
  }

  delete(type: string, id: string): this {
    this.entries.push({ request: { method: "DELETE", url: `${type}/${encodeURIComponent(id)}` } });
    return this;
  }

  read(type: string, id: string): this {
    this.entries.push({ request: { method: "GET", url: `${type}/${encodeURIComponent(id)}` } });
    return this;
  }

  search(type: string, params: SearchParams): this {
    this.entries.push({ request: { method: "GET", url: `${type}?${toSearchParams(params)}` } });
    return this;
  }

  build(): Bundle {
    return { resourceType: "Bundle", type: this.type, entry: [...this.entries] };
  }
}
