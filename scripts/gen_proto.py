"""Regenerates the Python stubs from proto/ (`make proto`); `--out DIR` writes elsewhere (the drift test)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = "proto/cachesvc/v1/cache.proto"


def generate(out: Path) -> None:
    include = str(Path(protoc.__file__).parent / "_proto")
    # Map proto/cachesvc onto the client package so the stubs import as cachesvc_client.v1.*; the proto
    # package (cachesvc.v1) and service names on the wire are unchanged.
    args = [
        "protoc",
        f"-I{include}",
        f"-Icachesvc_client={ROOT / 'proto/cachesvc'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "clients/python")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
