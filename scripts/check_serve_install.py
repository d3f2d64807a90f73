"""Fails when what `make serve` installs (cachesvc with its `export` extra) would bring torch.

Serving and the default, torch-free model export need onnxruntime, tokenizers, numpy, onnx and safetensors; a
torch pulled in by a new requirement would cost a fresh user's machine several GB (pip resolves a bare `torch` to
the CUDA build). The check walks the requirements of the installed distributions (the closure `make wheelhouse`
uses), so it means the same in a venv where `make test` has also installed torch for the dev parity tests.
With --installed it also checks that torch is not importable (right after the serve install on a new venv).

Usage: .venv/bin/python scripts/check_serve_install.py [--installed]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from wheelhouse import runtime_closure

SERVE_EXTRAS = ("export",)
# torch itself, what only the torch route needs, and the CUDA wheels a default torch brings
FORBIDDEN = ("torch", "torchvision", "sentence-transformers", "transformers", "triton")
FORBIDDEN_PREFIXES = ("nvidia-",)


def forbidden_in(closure: dict[str, str]) -> list[str]:
    """The distributions of `closure` that the serve install must not need."""
    return sorted(n for n in closure if n in FORBIDDEN or n.startswith(FORBIDDEN_PREFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--installed", action="store_true", help="also fail when torch is importable here")
    args = parser.parse_args()
    closure = runtime_closure("cachesvc", SERVE_EXTRAS)
    bad = forbidden_in(closure)
    if bad:
        print(f"check_serve_install: cachesvc[{','.join(SERVE_EXTRAS)}] requires {bad}; serving and the default "
              "export must not need torch (it belongs in the export-torch extra)", file=sys.stderr)
        return 1
    if args.installed and importlib.util.find_spec("torch") is not None:
        print(f"check_serve_install: torch is installed in {sys.prefix} by the serve install", file=sys.stderr)
        return 1
    print(f"check_serve_install: cachesvc[{','.join(SERVE_EXTRAS)}] needs {len(closure)} distributions, no torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
