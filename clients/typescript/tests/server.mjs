// The real `calldesk serve` binary as a child process, for the package's tests.
//
// The binary is built by ./scripts/test (`cargo build --locked`) before these tests run:
// $CARGO_TARGET_DIR (default target/)/debug/calldesk. Set CALLDESK_BIN to test another one.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, openSync, closeSync, accessSync, constants } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const REPO_ROOT = resolve(fileURLToPath(import.meta.url), "../../../..");
const STARTUP_TIMEOUT_MS = 30_000;
const SHUTDOWN_TIMEOUT_MS = 10_000;

function binaryPath() {
  if (process.env.CALLDESK_BIN) return process.env.CALLDESK_BIN;
  const target = resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR || "target");
  return join(target, "debug", "calldesk");
}

/**
 * Starts `calldesk serve` on a free loopback port with a fast simulated switch, and
 * `extraArgs` (e.g. `["--caller-ids", file]`).
 * Resolves to { address, baseUrl, stop } once it prints `calldesk listening on ADDR`.
 */
export async function startServer(extraArgs = []) {
  const binary = binaryPath();
  try {
    accessSync(binary, constants.X_OK);
  } catch {
    throw new Error(
      `calldesk binary not found at ${binary}: build it first with \`cargo build --locked\` ` +
        "(./scripts/test does), or point CALLDESK_BIN at one",
    );
  }
  const work = mkdtempSync(join(tmpdir(), "calldesk-ts-"));
  const stderrPath = join(work, "stderr.log");
  const stderrFd = openSync(stderrPath, "w");
  const args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", join(work, "data"),
    "--sim-ring", "20ms", "--sim-answer", "20ms", ...extraArgs];
  const child = spawn(binary, args, { cwd: work, stdio: ["ignore", "pipe", stderrFd] });
  closeSync(stderrFd);
  const serverLog = () => {
    try {
      return readFileSync(stderrPath, "utf8").slice(-4000);
    } catch {
      return "";
    }
  };
  const exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));

  const address = await new Promise((res, rej) => {
    let seen = "";
    const timer = setTimeout(() => {
      rej(new Error(`no 'calldesk listening on' line within ${STARTUP_TIMEOUT_MS} ms\n` +
        `stdout: ${seen}\nstderr: ${serverLog()}`));
    }, STARTUP_TIMEOUT_MS);
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
      rej(new Error(`calldesk serve exited (${code ?? signal}) before listening\n` +
        `stdout: ${seen}\nstderr: ${serverLog()}`));
    });
  }).catch((err) => {
    child.kill("SIGKILL");
    rmSync(work, { recursive: true, force: true });
    throw err;
  });
  child.stdout.resume(); // keep draining stdout so the server never blocks on it

  async function stop() {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM"); // graceful shutdown
      const timer = setTimeout(() => child.kill("SIGKILL"), SHUTDOWN_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    }
    rmSync(work, { recursive: true, force: true });
  }

  return { address, baseUrl: `http://${address}`, stop, serverLog };
}
