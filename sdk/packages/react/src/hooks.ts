import {
  type ClinikError,
  type ResourceOf,
  type ResourceType,
  type SearchParams,
  toSearchParams,
} from "@clinikapi/sdk";
import type { Bundle, FhirResource } from "fhir/r4";
import { useCallback, useEffect, useMemo, useRef, useState } from "react";

import { useClinik, useOptionalClinik } from "./context.js";

export interface AsyncState<T> {
  data: T | undefined;
  error: ClinikError | Error | undefined;
  loading: boolean;
  refetch: () => void;
}

function useAsync<T>(load: (signal: AbortSignal) => Promise<T>, key: string, enabled = true): AsyncState<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<Error | undefined>(undefined);
  const [loading, setLoading] = useState(enabled);
  const [generation, setGeneration] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;

  useEffect(() => {
    if (!enabled) {
      setLoading(false);
      return;
    }
    const controller = new AbortController();
    setLoading(true);
    setError(undefined);
    loadRef.current(controller.signal).then(
      (value) => {
        if (!controller.signal.aborted) {
          setData(value);
          setLoading(false);
        }
      },
      (failure: unknown) => {
        if (!controller.signal.aborted) {
          setError(failure instanceof Error ? failure : new Error(String(failure)));
          setLoading(false);
        }
      },
    );
    return () => controller.abort();
  }, [key, generation, enabled]);

  const refetch = useCallback(() => setGeneration((n) => n + 1), []);
  return { data, error, loading, refetch };
}

/** One resource by type and id; re-read with refetch(). */
export function useResource<K extends ResourceType>(
  type: K,
  id: string | undefined,
): AsyncState<ResourceOf<K>> {
  const client = useOptionalClinik();
  return useAsync(
    (signal) => {
      if (!client) throw new Error("useResource: wrap the component in <ClinikProvider>");
      return client.read(type, id ?? "", { signal });
    },
    `${type}/${id ?? ""}`,
    Boolean(id),
  );
}

export interface SearchState<K extends ResourceType> extends AsyncState<Bundle<ResourceOf<K>>> {
  resources: ResourceOf<K>[];
  total: number | undefined;
  hasNext: boolean;
  hasPrevious: boolean;
  nextPage: () => void;
  previousPage: () => void;
}

/** A search with paging: follows the server's next/previous links. */
export function useSearch<K extends ResourceType>(
  type: K,
  params?: SearchParams,
  options: { enabled?: boolean } = {},
): SearchState<K> {
  const enabled = options.enabled ?? true;
  const maybeClient = useOptionalClinik();
  const query = useMemo(() => toSearchParams(params).toString(), [params]);
  const [pageUrl, setPageUrl] = useState<string | undefined>(undefined);
  useEffect(() => setPageUrl(undefined), [type, query]);

  const state = useAsync<Bundle<ResourceOf<K>>>(
    async (signal) => {
      if (!maybeClient) throw new Error("useSearch: wrap the component in <ClinikProvider>");
      const client = maybeClient;
      if (pageUrl) {
        const response = await client.raw("GET", pageUrl, { signal, label: `search ${type}` });
        return (await response.json()) as Bundle<ResourceOf<K>>;
      }
      return client.search(type, new URLSearchParams(query), { signal });
    },
    `${type}?${query}#${pageUrl ?? ""}`,
    enabled,
  );
  const link = (relation: string) => state.data?.link?.find((l) => l.relation === relation)?.url;
  const next = link("next");
  const previous = link("previous") ?? link("prev");
  const resources = (state.data?.entry ?? [])
    .filter((entry) => entry.search?.mode !== "include" && entry.resource?.resourceType === type)
    .map((entry) => entry.resource as ResourceOf<K>);
  return {
    ...state,
    resources,
    total: state.data?.total,
    hasNext: Boolean(next),
    hasPrevious: Boolean(previous),
    nextPage: () => next && setPageUrl(next),
    previousPage: () => previous && setPageUrl(previous),
  };
}

export interface MutationState<A extends unknown[], R> {
  mutate: (...args: A) => Promise<R>;
  data: R | undefined;
  error: ClinikError | Error | undefined;
  loading: boolean;
  reset: () => void;
}

function useMutation<A extends unknown[], R>(run: (...args: A) => Promise<R>): MutationState<A, R> {
  const [data, setData] = useState<R | undefined>(undefined);
  const [error, setError] = useState<Error | undefined>(undefined);
  const [loading, setLoading] = useState(false);
  const runRef = useRef(run);
  runRef.current = run;
  const mutate = useCallback(async (...args: A) => {
    setLoading(true);
    setError(undefined);
    try {
      const result = await runRef.current(...args);
      setData(result);
      return result;
    } catch (failure) {
      setError(failure instanceof Error ? failure : new Error(String(failure)));
      throw failure;
    } finally {
      setLoading(false);
    }
  }, []);
  const reset = useCallback(() => {
    setData(undefined);
    setError(undefined);
  }, []);
  return { mutate, data, error, loading, reset };
}

export function useCreate<T extends FhirResource>(): MutationState<[T], T> {
  const client = useClinik();
  return useMutation((resource: T) => client.create(resource));
}

export function useUpdate<T extends FhirResource>(): MutationState<[T], T> {
  const client = useClinik();
  return useMutation((resource: T) => client.update(resource, resource.meta?.versionId ? { ifMatch: true } : {}));
}

export function useDelete(): MutationState<[ResourceType, string], void> {
  const client = useClinik();
  return useMutation((type: ResourceType, id: string) => client.delete(type, id));
}
