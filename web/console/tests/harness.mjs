// The browser tests' harness: the real `calldesk serve` binary on a free loopback port, and
// Debian's chromium driven by playwright-core (no browser download).
//
// The binary is the one ./scripts/test builds (`cargo build --locked`):
// $CARGO_TARGET_DIR (default target/)/debug/calldesk; CALLDESK_BIN points at another one.
// CHROMIUM points at another browser than /usr/bin/chromium.
import { spawn } from "node:child_process";
import { accessSync, closeSync, constants, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const REPO_ROOT = resolve(HERE, "../../..");
/** Where each test leaves a PNG of its page (ignored by git). */
export const SCREENSHOTS = resolve(HERE, "../screenshots");
const STARTUP_TIMEOUT_MS = 30_000;
const SHUTDOWN_TIMEOUT_MS = 10_000;
/** How long a step in the page may take before the test fails. */
export const STEP_MS = 10_000;

/** The calldesk binary the tests run. */
export function binaryPath() {
  if (process.env.CALLDESK_BIN) return process.env.CALLDESK_BIN;
  const target = resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR || "target");
  return join(target, "debug", "calldesk");
}

/**
 * Starts `calldesk serve` with `args` (on 127.0.0.1:0 unless `listen` is given) and its own
 * data dir (`dataDir`, else a new one). Resolves once it prints its listen line to
 * { address, url, dataDir, stop(), kill() }.
 */
export async function startCalldesk(args = [], { listen = "127.0.0.1:0", dataDir } = {}) {
  const binary = binaryPath();
  try {
    accessSync(binary, constants.X_OK);
  } catch {
    throw new Error(`calldesk binary not found at ${binary}: build it first (cargo build --locked)`);
  }
  const work = mkdtempSync(join(tmpdir(), "calldesk-console-"));
  const data = dataDir ?? join(work, "data");
  const stderrPath = join(work, "stderr.log");
  const stderrFd = openSync(stderrPath, "w");
  const child = spawn(binary, ["serve", "--listen", listen, "--data-dir", data, ...args], {
    stdio: ["ignore", "pipe", stderrFd],
  });
  closeSync(stderrFd);
  const log = () => {
    try {
      return readFileSync(stderrPath, "utf8").slice(-4000);
    } catch {
      return "";
    }
  };
  const exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));
  const address = await new Promise((res, rej) => {
    let seen = "";
    const timer = setTimeout(() => rej(new Error(`no listen line within ${STARTUP_TIMEOUT_MS} ms: ${log()}`)),
      STARTUP_TIMEOUT_MS);
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk) => {
      seen += chunk;
      const match = /calldesk listening on (\S+)/.exec(seen);
      if (match) {
        clearTimeout(timer);
        res(match[1]);
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      rej(new Error(`calldesk exited (${code ?? signal}) before listening: ${log()}`));
    });
  }).catch((err) => {
    child.kill("SIGKILL");
    throw err;
  });
  child.stdout.resume();

  async function stop() {
    if (child.exitCode === null && child.signalCode === null) {
      // SIGINT: a graceful stop that hangs up the calls a test leaves live at once (SIGTERM
      // would wait for them, --drain-calls-for).
      child.kill("SIGINT");
      const timer = setTimeout(() => child.kill("SIGKILL"), SHUTDOWN_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    }
  }
  async function cleanup() {
    await stop();
    rmSync(work, { recursive: true, force: true });
  }
  return { address, url: `http://${address}`, dataDir: data, stop, cleanup, log };
}

/** Debian's chromium, headless. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox"],
  });
}

/** Saves a PNG of `page` as screenshots/NAME.png. */
export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

/** Signs in in development mode as `agent`, as a person would. */
export async function signIn(page, url, agent) {
  await page.goto(url);
  await page.fill("#agent-id", agent);
  await page.click("#signin-button");
  await page.waitForSelector("#desk:not([hidden])", { timeout: STEP_MS });
}

/** Fills the click-to-call form and presses Call. */
export async function placeCall(page, phone, object = {}) {
  await page.fill("#phone", phone);
  await page.fill("#object-id", object.id ?? "");
  await page.fill("#object-type", object.type ?? "");
  await page.fill("#object-name", object.displayName ?? "");
  await page.fill("#object-display-type", object.displayType ?? "");
  for (const [key, value] of Object.entries(object.customFields ?? {})) {
    await page.click("#add-field");
    await page.locator(".field-row .field-key").last().fill(key);
    await page.locator(".field-row .field-value").last().fill(value);
  }
  await page.click("#call-button");
}

/** Waits until the selected interaction's summary shows `text`. */
export async function waitForSummary(page, text) {
  await page.waitForFunction(
    (t) => document.getElementById("detail-summary")?.textContent?.includes(t),
    text,
    { timeout: STEP_MS },
  );
}

/** The timeline on screen: [{ seq, text }] in order. */
export async function timeline(page) {
  return page.$$eval("#timeline li", (items) =>
    items.map((li) => ({ seq: Number(li.dataset.seq), text: li.textContent })));
}
