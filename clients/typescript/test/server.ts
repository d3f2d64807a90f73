/**
 * Test helpers: a real cachesvc server (the repository's Python server, started per test file on a free port),
 * a silent TCP listener (accepts connections, never answers) and a free port nobody listens on.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (this file runs from clients/typescript/build/test/). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");

/** The repository's Python (its .venv, as `make test` builds it), or CACHESVC_TEST_PYTHON. */
export const PYTHON = process.env["CACHESVC_TEST_PYTHON"] ?? path.join(REPO_ROOT, ".venv/bin/python");

const MODEL_DIR = path.resolve(REPO_ROOT, process.env["CACHESVC_TEST_MODEL_DIR"] ?? "models/all-MiniLM-L6-v2");
const READY = /cachesvc serving on [^\s]+:(\d+)/;
const START_TIMEOUT_MS = 120_000;

export interface RunningServer {
  /** `127.0.0.1:<port>` */
  readonly target: string;
  stop(): Promise<void>;
}

/**
 * Starts `python -m cachesvc serve` on port 0 with a fresh data directory and waits for its "serving on" log
 * line, which carries the bound port (it is logged once the health service says SERVING).
 */
export async function startServer(extraArgs: readonly string[] = []): Promise<RunningServer> {
  const dataDir = mkdtempSync(path.join(tmpdir(), "cachesvc-ts-"));
  const args = [
    "-m", "cachesvc", "serve",
    "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1",
    "--data-dir", dataDir, "--model-dir", MODEL_DIR,
    "--embed-workers", "1", "--fsync", "no", "--grace-seconds", "1",
    ...extraArgs,
  ];
  const child = spawn(PYTHON, args, { cwd: REPO_ROOT, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cachesvc did not start in time:\n${log}`)), START_TIMEOUT_MS);
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (text: string) => {
      log += text;
      const match = READY.exec(log);
      if (match?.[1] !== undefined) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`cachesvc exited with ${code} before serving:\n${log}`));
    });
  });
  child.removeAllListeners("exit");
  return {
    target: `127.0.0.1:${port}`,
    stop: async () => {
      await stopChild(child);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return;
  }
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
  await exited;
  clearTimeout(timer);
}

/** A TCP listener that accepts connections and never answers: calls to it can only end by their deadline. */
export async function startSilentServer(): Promise<{ target: string; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    target: `127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) {
          socket.destroy();
        }
        server.close(() => resolve());
      }),
  };
}

/** A loopback port that was free a moment ago and has no listener (connections are refused). */
export async function closedPort(): Promise<string> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `127.0.0.1:${port}`;
}
