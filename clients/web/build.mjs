// Builds the page into dist/ (or the directory given as the first argument):
//   dist/index.html, dist/app.js (one ES module, minified), dist/app.css (minified).
// The output depends only on the sources and the pinned tool versions, so it is byte-for-byte
// reproducible: dist/ is committed (the flashsale binary embeds it) and test/dist.test.mjs
// rebuilds it and compares. Run through `npm run build`, which generates src/gen first.
import { createHash } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = resolve(process.argv[2] ?? join(here, "dist"));

const js = await esbuild.build({
  absWorkingDir: here,
  entryPoints: ["src/main.ts"],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022", "chrome100", "firefox100", "safari15"],
  minify: true,
  legalComments: "none",
  charset: "utf8",
  sourcemap: false,
  write: false,
  outfile: "app.js",
  logLevel: "warning",
});
const css = await esbuild.transform(await readFile(join(here, "style.css"), "utf8"), {
  loader: "css",
  minify: true,
  legalComments: "none",
  charset: "utf8",
  target: ["chrome100", "firefox100", "safari15"],
});

const appJs = js.outputFiles[0].contents;
const appCss = Buffer.from(css.code, "utf8");
const short = (bytes) => createHash("sha256").update(bytes).digest("hex").slice(0, 12);

// The asset URLs carry a hash of their content, so the server may let browsers cache them for good.
let html = await readFile(join(here, "index.html"), "utf8");
const replace = (from, to) => {
  if (!html.includes(from)) throw new Error(`index.html does not reference ${from}`);
  html = html.replace(from, to);
};
replace('href="app.css"', `href="app.css?v=${short(appCss)}"`);
replace('src="app.js"', `src="app.js?v=${short(appJs)}"`);

await mkdir(outdir, { recursive: true });
await writeFile(join(outdir, "app.js"), appJs);
await writeFile(join(outdir, "app.css"), appCss);
await writeFile(join(outdir, "index.html"), html);
for (const [name, bytes] of [["index.html", Buffer.from(html)], ["app.js", appJs], ["app.css", appCss]]) {
  console.log(`${join(outdir, name)}  ${bytes.length} bytes  sha256:${short(bytes)}`);
}
