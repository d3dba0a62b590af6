// Builds the console into dist/ (committed; calldesk embeds it with include_bytes!): the
// bundle of src/main.ts (with @calldesk/client, Connect and protobuf-es) and the page and
// style as they are. Deterministic: the same sources and package-lock give the same bytes, so
// CI rebuilds and fails if dist/ differs (`git diff --exit-code web/console/dist`).
//
// A file whose bytes are already those is not written again: its modification time then stays,
// so that the next cargo build, which tracks the embedded files by time, does not recompile
// calldesk after a build that changed nothing (scripts/test builds the console every run).
import { build } from "esbuild";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
mkdirSync(dist, { recursive: true });

const result = await build({
  entryPoints: [join(here, "src/main.ts")],
  outfile: join(dist, "console.js"),
  bundle: true,
  format: "iife",
  target: ["es2022"],
  platform: "browser",
  minify: true,
  legalComments: "none",
  charset: "utf8",
  metafile: true,
  logLevel: "warning",
  write: false,
});

/** Writes `bytes` to `path` unless the file already holds exactly them; says which. */
function writeIfChanged(path, bytes) {
  let old = null;
  try {
    old = readFileSync(path);
  } catch (e) {
    if (e.code !== "ENOENT") throw e;
  }
  if (old !== null && Buffer.compare(old, Buffer.from(bytes)) === 0) return false;
  writeFileSync(path, bytes);
  return true;
}

const outputs = [
  ...result.outputFiles.map((f) => [f.path, f.contents]),
  [join(dist, "index.html"), readFileSync(join(here, "src/index.html"))],
  [join(dist, "console.css"), readFileSync(join(here, "src/console.css"))],
];
const written = outputs.filter(([path, bytes]) => writeIfChanged(path, bytes)).map(([path]) => basename(path));
const bytes = Object.values(result.metafile.outputs).reduce((sum, o) => sum + o.bytes, 0);
console.log(
  `web/console/dist: console.js ${bytes} bytes, index.html, console.css; ` +
    (written.length ? `written: ${written.join(", ")}` : "unchanged, nothing written"),
);
