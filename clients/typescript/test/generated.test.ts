/** The committed generated code is exactly what `npm run generate` makes from proto/cachesvc/v1/cache.proto. */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { it } from "node:test";

import { REPO_ROOT } from "./server.js";

const PACKAGE = path.join(REPO_ROOT, "clients/typescript");

function files(root: string, dir = ""): string[] {
  return readdirSync(path.join(root, dir), { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? files(root, path.join(dir, entry.name)) : [path.join(dir, entry.name)],
  );
}

it("committed src/gen matches the proto (else run `npm run generate` or `make proto`)", () => {
  const out = mkdtempSync(path.join(tmpdir(), "cachesvc-ts-gen-"));
  try {
    const bin = path.join(PACKAGE, "node_modules/.bin");
    execFileSync(path.join(bin, "buf"), ["generate", "--output", out], {
      cwd: PACKAGE,
      env: { ...process.env, PATH: `${bin}${path.delimiter}${process.env["PATH"] ?? ""}` },
      stdio: ["ignore", "ignore", "inherit"],
    });
    const generated = path.join(out, "src/gen");
    const committed = path.join(PACKAGE, "src/gen");
    assert.deepEqual(files(generated).sort(), files(committed).sort());
    for (const name of files(generated)) {
      assert.equal(readFileSync(path.join(committed, name), "utf8"), readFileSync(path.join(generated, name), "utf8"),
        `${name} differs from the proto`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
