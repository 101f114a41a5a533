// The size budget: the ESM build, minified and gzipped, must stay within 15 kB.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { transform } from "esbuild";

const BUDGET = 15 * 1024;
const source = readFileSync(new URL("../dist/index.js", import.meta.url), "utf8");
const { code } = await transform(source, { minify: true, format: "esm", target: "es2022" });
const size = gzipSync(code, { level: 9 }).length;
console.log(`@clinikapi/sdk: ${(size / 1024).toFixed(1)} kB minified + gzipped (budget 15 kB)`);
if (size > BUDGET) process.exit(1);
