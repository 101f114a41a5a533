import type { ResourceOf, ResourceType, SearchParams } from "@clinikapi/sdk";
import { type ReactNode, useId, useMemo, useState } from "react";

import { useSearch } from "./hooks.js";
import { OperationOutcomeAlert } from "./OperationOutcomeAlert.js";

export interface Column<T> {
  header: string;
  render: (resource: T) => ReactNode;
  /** The search parameter to sort by when the header is clicked (`_sort`). */
  sortParam?: string;
}

/** A page of search results as a table: sortable columns, next/previous paging. */
export function ResourceTable<K extends ResourceType>({
  resourceType,
  columns,
  params,
  pageSize = 20,
  caption,
  onSelect,
}: {
  resourceType: K;
  columns: Column<ResourceOf<K>>[];
  params?: Record<string, string | undefined>;
  pageSize?: number;
  caption?: string;
  onSelect?: (resource: ResourceOf<K>) => void;
}) {
  const [sort, setSort] = useState<{ param: string; descending: boolean } | undefined>(undefined);
  const query = useMemo<SearchParams>(
    () => ({
      ...params,
      _count: pageSize,
      _total: "accurate",
      ...(sort ? { _sort: `${sort.descending ? "-" : ""}${sort.param}` } : {}),
    }),
    [params, pageSize, sort],
  );
  const search = useSearch(resourceType, query);
  const status = useId();

  const toggle = (param: string) =>
    setSort((current) =>
      current?.param === param ? { param, descending: !current.descending } : { param, descending: false },
    );

  return (
    <div className="ck-table-wrap">
      <OperationOutcomeAlert error={search.error} />
      <table className="ck-table" aria-busy={search.loading} aria-describedby={status}>
        {caption ? <caption>{caption}</caption> : null}
        <thead>
          <tr>
            {columns.map((column) => {
              const active = sort && column.sortParam === sort.param;
              const ariaSort = active ? (sort.descending ? "descending" : "ascending") : "none";
              return (
                <th key={column.header} scope="col" aria-sort={column.sortParam ? ariaSort : undefined}>
                  {column.sortParam ? (
                    <button type="button" className="ck-sort" onClick={() => toggle(column.sortParam ?? "")}>
                      {column.header}
                      <span aria-hidden="true">{active ? (sort.descending ? " ▼" : " ▲") : ""}</span>
                    </button>
                  ) : (
                    column.header
                  )}
                </th>
              );
            })}
          </tr>
        </thead>
        <tbody>
          {search.resources.map((resource) => (
            <tr
              key={resource.id}
              {...(onSelect
                ? {
                    tabIndex: 0,
                    className: "ck-row-selectable",
                    onClick: () => onSelect(resource),
                    onKeyDown: (event) => {
                      if (event.key === "Enter" || event.key === " ") {
                        event.preventDefault();
                        onSelect(resource);
                      }
                    },
                  }
                : {})}
            >
              {columns.map((column) => (
                <td key={column.header}>{column.render(resource)}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
      <div className="ck-pager">
        <p id={status} role="status" className="ck-status">
          {search.loading
            ? "Loading…"
            : search.total === undefined
              ? `${search.resources.length} shown`
              : `${search.total.toLocaleString()} found`}
        </p>
        <button type="button" onClick={search.previousPage} disabled={!search.hasPrevious}>
          Previous page
        </button>
        <button type="button" onClick={search.nextPage} disabled={!search.hasNext}>
          Next page
        </button>
      </div>
    </div>
  );
}
