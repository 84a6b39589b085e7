// The committed dist/ (embedded in the flashsale binary) must be exactly what the sources
// build to: regenerate the API code, rebuild into a temp dir and compare byte for byte.
// When this fails, run `npm run build` in clients/web and commit dist/.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const web = resolve(dirname(fileURLToPath(import.meta.url)), "..");

test("dist/ is the committed build of the sources", { timeout: 120_000 }, async () => {
  const out = await mkdtemp(join(tmpdir(), "flashsale-web-dist-"));
  try {
    // buf runs the local protoc-gen-es plugin, found on PATH as under `npm run`.
    const env = { ...process.env, PATH: `${join(web, "node_modules/.bin")}${delimiter}${process.env.PATH ?? ""}` };
    execFileSync(join(web, "node_modules/.bin/buf"), ["generate"], { cwd: web, env, stdio: "inherit" });
    execFileSync(process.execPath, [join(web, "build.mjs"), out], { cwd: web, stdio: ["ignore", "ignore", "inherit"] });
    const built = (await readdir(out)).sort();
    const committed = (await readdir(join(web, "dist"))).sort();
    assert.deepEqual(committed, built, "dist/ holds other files than the build makes");
    for (const name of built) {
      const a = await readFile(join(web, "dist", name));
      const b = await readFile(join(out, name));
      assert.ok(a.equals(b), `dist/${name} differs from a fresh build: run \`npm run build\` in clients/web and commit dist/`);
    }
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});
