// Builds the console into dist/ (committed; calldesk embeds it with include_bytes!): the
// bundle of src/main.ts (with @calldesk/client, Connect and protobuf-es) and the page and
// style as they are. Deterministic: the same sources and package-lock give the same bytes, so
// CI rebuilds and fails if dist/ differs (`git diff --exit-code web/console/dist`).
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
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
});
copyFileSync(join(here, "src/index.html"), join(dist, "index.html"));
copyFileSync(join(here, "src/console.css"), join(dist, "console.css"));
const bytes = Object.values(result.metafile.outputs).reduce((sum, o) => sum + o.bytes, 0);
console.log(`web/console/dist: console.js ${bytes} bytes, index.html, console.css`);
