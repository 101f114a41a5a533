import type { ClinikClient } from "@clinikapi/sdk";
import { createContext, type ReactNode, useContext } from "react";

const ClientContext = createContext<ClinikClient | null>(null);

/**
 * Gives the components and hooks below it a ClinikClient. In a browser, point the
 * client at your own backend proxy (which adds the API key server-side), or use a
 * read-only key restricted to your origin: a secret key does not belong in a page.
 */
export function ClinikProvider({ client, children }: { client: ClinikClient; children: ReactNode }) {
  return <ClientContext.Provider value={client}>{children}</ClientContext.Provider>;
}

/** The provider's client, or null outside a ClinikProvider. */
export function useOptionalClinik(): ClinikClient | null {
  return useContext(ClientContext);
}

export function useClinik(): ClinikClient {
  const client = useContext(ClientContext);
  if (!client) throw new Error("useClinik: wrap the component in <ClinikProvider client={...}>");
  return client;
}
