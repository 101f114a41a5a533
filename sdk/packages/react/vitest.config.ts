import { defineConfig } from "vitest/config";

export default defineConfig({
  esbuild: { jsx: "automatic" },
  test: { environment: "jsdom", setupFiles: ["test/setup.ts"], testTimeout: 60_000, hookTimeout: 60_000 },
});
