"""The committed gRPC stubs are exactly what `make proto` generates from proto/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "clients/python/cachesvc_client/v1"


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts/gen_proto.py")
    assert spec is not None and spec.loader is not None
    gen_proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_proto)
    gen_proto.generate(tmp_path)
    generated = tmp_path / "cachesvc_client/v1"
    names = sorted(p.name for p in generated.iterdir())
    assert names == ["cache_pb2.py", "cache_pb2.pyi", "cache_pb2_grpc.py"]
    for name in names:
        if (generated / name).read_bytes() != (COMMITTED / name).read_bytes():
            pytest.fail(f"{COMMITTED / name} differs from proto/cachesvc/v1/cache.proto: run `make proto`")
