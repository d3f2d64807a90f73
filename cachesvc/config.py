"""One Settings object: defaults < TOML file < CACHESVC_* environment < command-line flags; validated.

This is the only module that reads the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cachesvc.core.limits import TenantLimits
from cachesvc.core.verify import VerifierMode

ENV_PREFIX = "CACHESVC_"


class Fsync(StrEnum):
    ALWAYS = "always"
    EVERYSEC = "everysec"
    NO = "no"


class OnModelChange(StrEnum):
    REFUSE = "refuse"
    REEMBED = "reembed"
    EMPTY = "empty"


class BackendKind(StrEnum):
    EMBEDDED = "embedded"
    REDIS = "redis"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _spec(help: str, *, secret: bool = False, url: bool = False) -> Any:
    return {"help": help, "secret": secret, "url": url}


# Settings of the embedded backend's own memory and data directory; with the redis backend, memory is Redis'
# (maxmemory and its eviction policy) and so is durability, so setting them there is refused rather than ignored.
EMBEDDED_ONLY = ("max_bytes", "max_entries", "data_dir", "fsync", "snapshot_interval", "repair", "on_model_change",
                 "hnsw_threshold")


@dataclass(frozen=True, kw_only=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata=_spec("address to listen on"))
    port: int = field(default=50051, metadata=_spec("gRPC port (0 = any free port)"))
    metrics_port: int = field(default=9464, metadata=_spec("Prometheus /metrics port on --metrics-host (-1 = off)"))
    metrics_host: str = field(default="127.0.0.1", metadata=_spec(
        "address /metrics listens on: loopback by default, whatever --host is (it has no authentication)"))
    data_dir: Path = field(default=Path("data"), metadata=_spec(
        "directory for the snapshot and write-ahead log (one server per directory)"))
    fsync: Fsync = field(default=Fsync.ALWAYS, metadata=_spec(
        "when stores reach the disk: always (before the reply), everysec, or no (when the OS decides)"))
    snapshot_interval: float = field(default=300.0, metadata=_spec(
        "seconds between snapshots (also taken after 256 MB of log and on shutdown)"))
    repair: bool = field(default=False, metadata=_spec(
        "start despite corrupt data files: keep every readable record, move the damaged file aside"))
    on_model_change: OnModelChange = field(default=OnModelChange.REFUSE, metadata=_spec(
        "when the data directory was built with another model: refuse, reembed (embed the cached prompts again "
        "before serving), or empty (move the old data aside)"))
    model_dir: Path = field(default=Path("models/all-MiniLM-L6-v2"),
                            metadata=_spec("model directory made by `cachesvc model export`"))
    # 0.95: the lowest threshold whose precision reaches 0.85 by its 95% lower bound on the QQP development set
    # (precision 0.870, recall 0.213; 0.90 gives 0.793 / 0.433). See bench/RESULTS.md.
    min_similarity: float = field(default=0.95, metadata=_spec(
        "default threshold without a hit verifier: cosine similarity in [0, 1] a nearest entry needs to be served; "
        "higher is stricter"))
    verifier: VerifierMode = field(default=VerifierMode.COMBINED, metadata=_spec(
        "hit verifier: off, rules (text mismatch checks), model (learned pair model) or combined (rules, then model)"))
    verifier_weights: str = field(default="", metadata=_spec(
        "the learned verifier's weights: a file from bench/train_verifier.py, e.g. trained on labelled pairs of "
        "your own traffic (empty = the general model shipped in the package)"))
    namespace_verifiers: Mapping[str, VerifierMode] = field(default_factory=dict, metadata=_spec(
        "a namespace's own hit verifier, in every tenant, as namespace=mode pairs, comma-separated (e.g. "
        "support=off,billing=rules); other namespaces use --verifier"))
    # 0.82 with verifier_min_score 0.60: chosen on the development domains (bench/RESULTS.md, "A verifier trained
    # across domains"): at least the right hits of `rules` at 0.85 on every one, and more precise on near-misses.
    recall_similarity: float = field(default=0.82, metadata=_spec(
        "default threshold while a verifier runs: cosine similarity in [0, 1] a candidate needs to be verified "
        "(and served if accepted); <= min_similarity"))
    default_ttl: float = field(default=0.0, metadata=_spec("TTL in seconds for stores that set none (0 = never)"))
    max_ttl: float = field(default=10 * 366 * 86400, metadata=_spec(
        "largest ttl_seconds a store may ask for, seconds (larger ones are INVALID_ARGUMENT; 0 still means never)"))
    max_bytes: int = field(default=1 << 30, metadata=_spec(
        "memory budget in bytes for entries (vectors + texts + metadata + overhead); LRU eviction past it"))
    max_entries: int = field(default=0, metadata=_spec("entry cap (0 = none); LRU eviction past it"))
    top_k: int = field(default=4, metadata=_spec("nearest candidates examined per semantic lookup"))
    max_prompt_bytes: int = field(default=32 * 1024, metadata=_spec("largest prompt accepted, UTF-8 bytes"))
    max_completion_bytes: int = field(default=1024 * 1024, metadata=_spec("largest completion accepted"))
    max_metadata_bytes: int = field(default=16 * 1024, metadata=_spec("largest metadata map accepted"))
    sweep_interval: float = field(default=1.0, metadata=_spec("seconds between TTL sweeps"))
    embed_workers: int = field(default=2, metadata=_spec("model worker threads (one core each)"))
    intra_op_threads: int = field(default=1, metadata=_spec("onnxruntime threads per model run"))
    max_batch_size: int = field(default=32, metadata=_spec("most prompts embedded in one model run"))
    max_wait_ms: float = field(default=0.0, metadata=_spec("extra wait for a batch to fill, milliseconds"))
    max_queue: int = field(default=1024, metadata=_spec(
        "prompts waiting for the model before callers get RESOURCE_EXHAUSTED"))
    max_queue_ms: float = field(default=50.0, metadata=_spec(
        "longest a prompt may wait for the model, milliseconds: a lookup or store that cannot start embedding "
        "within it (or within its own gRPC deadline) gets RESOURCE_EXHAUSTED at once (0 = no time bound)"))
    max_concurrent_rpcs: int = field(default=1024, metadata=_spec(
        "calls the server serves at once (all connections); more are answered RESOURCE_EXHAUSTED at once"))
    memo_size: int = field(default=4096, metadata=_spec("recent prompt vectors remembered (no re-embedding)"))
    hnsw_threshold: int = field(default=5_000, metadata=_spec("scope size at which search switches to HNSW"))
    max_namespaces: int = field(default=1000, metadata=_spec(
        "namespaces one tenant may hold entries in (stores to one more are RESOURCE_EXHAUSTED); calls in "
        "namespaces past it are not counted per namespace"))
    api_keys: Mapping[str, str] = field(default_factory=dict, metadata=_spec(
        "API keys as tenant=key pairs, comma-separated (empty = no authentication, one tenant)", secret=True))
    tls_cert: str = field(default="", metadata=_spec(
        "PEM certificate chain for the gRPC port; with --tls-key the port speaks TLS only (empty = no TLS)"))
    tls_key: str = field(default="", metadata=_spec("PEM private key of --tls-cert"))
    tls_client_ca: str = field(default="", metadata=_spec(
        "PEM CA certificates: clients must present a certificate they signed (mutual TLS; empty = not asked)"))
    api_keys_file: str = field(default="", metadata=_spec(
        "TOML file of [[keys]] tables (tenant, sha256 of the key, optional lookups_per_second and "
        "stores_per_second), reloaded on SIGHUP; the way to give keys (empty = none)"))
    lookups_per_second: float = field(default=0.0, metadata=_spec(
        "each tenant's lookup rate unless its keys set one: token bucket, one second of burst (0 = unlimited)"))
    stores_per_second: float = field(default=0.0, metadata=_spec(
        "each tenant's store rate unless its keys set one (0 = unlimited)"))
    tenant_max_bytes: int = field(default=0, metadata=_spec(
        "bytes each tenant's entries may hold unless its keys set a max_bytes; past it the tenant's own least "
        "recently used entries are evicted (0 = only --max-bytes)"))
    log_format: LogFormat = field(default=LogFormat.TEXT, metadata=_spec("text or json (one line per request)"))
    log_level: str = field(default="INFO", metadata=_spec("DEBUG, INFO, WARNING or ERROR"))
    grace_seconds: float = field(default=10.0, metadata=_spec("how long shutdown waits for in-flight calls"))
    max_fill_lease: float = field(default=120.0, metadata=_spec(
        "single-flight: longest fill lease a lookup may take on a missed prompt, seconds"))
    max_fill_wait: float = field(default=60.0, metadata=_spec(
        "single-flight: longest a lookup may wait for another caller's fill of the same prompt, seconds"))
    # Scale-out: the redis backend (README, "Scale out").
    backend: BackendKind = field(default=BackendKind.EMBEDDED, metadata=_spec(
        "where entries live: embedded (this process and its data directory) or redis (one Redis or Redis Cluster "
        "with vector search, shared by every replica)"))
    redis_url: str = field(default="", metadata=_spec(
        "with --backend redis: redis://[user:password@]host:port/db, or rediss:// for TLS", url=True))
    redis_username: str = field(default="", metadata=_spec("Redis ACL user when the URL names none"))
    redis_password: str = field(default="", metadata=_spec("Redis password when the URL holds none", secret=True))
    redis_cluster: bool = field(default=False, metadata=_spec(
        "speak the Redis Cluster protocol (the URL names any node); each tenant's keys and index share one shard"))
    redis_prefix: str = field(default="cachesvc", metadata=_spec(
        "first part of every Redis key; caches under different prefixes share a Redis without seeing each other"))
    redis_timeout: float = field(default=0.5, metadata=_spec(
        "seconds a Redis operation may take before the call fails with UNAVAILABLE"))
    verifier_min_score: float = field(default=0.60, metadata=_spec(
        "the probability the learned model (verifier model or combined) must give a candidate to serve it, in "
        "[0, 1]; chosen with recall_similarity for the shipped weights, by their worst development domain"))
    # Callers' feedback on served hits (the Feedback call): per-entry thresholds under a bound on the false-hit rate.
    max_false_hit_rate: float = field(default=0.05, metadata=_spec(
        "bound on an entry's rate of wrong hits that feedback holds it to: an entry reported wrong needs a higher "
        "similarity to be served, until right reports show its rate is within the bound (Wilson bound), in (0, 1)"))
    feedback_confidence: float = field(default=0.95, metadata=_spec(
        "confidence of the bounds feedback is judged by, in (0.5, 1)"))
    feedback_floor_similarity: float = field(default=0.80, metadata=_spec(
        "the lowest an entry's threshold can fall on right reports (never below a lookup's own threshold)"))
    feedback_block_after: int = field(default=3, metadata=_spec(
        "wrong reports after which an entry whose wrong rate is confidently above the bound serves no paraphrase "
        "(exact hits still)"))

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} is not in 0..65535")
        if not -1 <= self.metrics_port <= 65535:
            problems.append(f"metrics_port {self.metrics_port} is not in -1..65535")
        if math.isnan(self.min_similarity) or not 0.0 <= self.min_similarity <= 1.0:
            problems.append(f"min_similarity {self.min_similarity} is not a cosine similarity in [0, 1]")
        if math.isnan(self.recall_similarity) or not 0.0 <= self.recall_similarity <= 1.0:
            problems.append(f"recall_similarity {self.recall_similarity} is not a cosine similarity in [0, 1]")
        elif self.recall_similarity > self.min_similarity:
            problems.append(f"recall_similarity {self.recall_similarity} must be <= min_similarity "
                            f"{self.min_similarity}")
        for name in ("default_ttl", "max_entries", "max_wait_ms", "max_queue_ms", "lookups_per_second",
                     "stores_per_second", "tenant_max_bytes", "max_fill_lease", "max_fill_wait"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.default_ttl > self.max_ttl:
            problems.append(f"default_ttl {self.default_ttl} must be <= max_ttl {self.max_ttl}")
        for name in ("snapshot_interval", "max_ttl", "max_bytes", "top_k", "max_prompt_bytes", "max_completion_bytes",
                     "max_metadata_bytes", "sweep_interval", "embed_workers", "intra_op_threads", "max_batch_size",
                     "max_queue", "hnsw_threshold", "grace_seconds", "max_concurrent_rpcs", "max_namespaces"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            problems.append("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS first)")
        if self.memo_size < 0:
            problems.append("memo_size must be >= 0")
        if math.isnan(self.verifier_min_score) or not 0.0 <= self.verifier_min_score <= 1.0:
            problems.append(f"verifier_min_score {self.verifier_min_score} is not in [0, 1]")
        if math.isnan(self.max_false_hit_rate) or not 0.0 < self.max_false_hit_rate < 1.0:
            problems.append(f"max_false_hit_rate {self.max_false_hit_rate} is not in (0, 1)")
        if math.isnan(self.feedback_confidence) or not 0.5 < self.feedback_confidence < 1.0:
            problems.append(f"feedback_confidence {self.feedback_confidence} is not in (0.5, 1)")
        if math.isnan(self.feedback_floor_similarity) or not 0.0 <= self.feedback_floor_similarity <= 1.0:
            problems.append(f"feedback_floor_similarity {self.feedback_floor_similarity} is not in [0, 1]")
        if self.feedback_block_after < 1:
            problems.append("feedback_block_after must be >= 1")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            problems.append(f"log_level {self.log_level!r} is not DEBUG, INFO, WARNING or ERROR")
        problems += self._backend_problems()
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))

    def _backend_problems(self) -> list[str]:
        if self.backend is not BackendKind.REDIS:
            return []
        problems = []
        if not self.redis_url:
            problems.append("backend redis needs redis_url (--redis-url or CACHESVC_REDIS_URL)")
        elif not self.redis_url.startswith(("redis://", "rediss://")):
            problems.append("redis_url must start with redis:// or rediss://")
        if self.redis_timeout <= 0:
            problems.append("redis_timeout must be > 0")
        defaults = {f.name: f for f in dataclasses.fields(self)}
        for name in EMBEDDED_ONLY:
            f = defaults[name]
            if getattr(self, name) != f.default:
                problems.append(f"{name} has no meaning with backend redis: memory and durability are Redis' "
                                f"(set maxmemory, an eviction policy and persistence in Redis; README, Scale out)")
        return problems

    @property
    def default_limits(self) -> TenantLimits:
        """The call rates of a tenant whose keys set none."""
        return TenantLimits(lookups_per_second=self.lookups_per_second or None,
                            stores_per_second=self.stores_per_second or None,
                            max_bytes=self.tenant_max_bytes or None)

    @property
    def default_threshold(self) -> float:
        """The threshold of a lookup that sets none: recall_similarity while a verifier runs, else min_similarity."""
        return self.min_similarity if self.verifier is VerifierMode.OFF else self.recall_similarity

    def redacted(self) -> dict[str, object]:
        """The settings as printed at start-up: secrets replaced by their count."""
        shown: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                value = f"<{len(value)} redacted>" if value else "<none>"
            elif f.metadata.get("url"):
                value = _redacted_url(value)
            elif isinstance(value, Path | StrEnum):
                value = str(value)
            shown[f.name] = value
        return shown


def _redacted_url(url: str) -> str:
    """The URL with any password replaced (user:secret@host -> user:***@host)."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.partition(':')[0]}:***@{host}"


def _api_keys(raw: object) -> dict[str, str]:
    if isinstance(raw, str):
        return _parse_api_keys(raw)
    if isinstance(raw, Mapping):  # a TOML table of tenant = "key"
        return {str(key): str(tenant) for tenant, key in raw.items()}
    raise TypeError("expected tenant=key pairs or a table")


def _namespace_verifiers(raw: object) -> dict[str, VerifierMode]:
    if isinstance(raw, str):
        pairs = [p.strip().partition("=") for p in raw.split(",") if p.strip()]
        if any(not sep or not ns.strip() for ns, sep, _mode in pairs):
            raise ValueError("expected namespace=mode pairs separated by commas")
        raw = {ns.strip(): mode.strip() for ns, _sep, mode in pairs}
    if isinstance(raw, Mapping):  # also a TOML table of namespace = "mode"
        modes = {m.value for m in VerifierMode}
        bad = [str(mode) for mode in raw.values() if str(mode) not in modes]
        if bad:
            raise ValueError(f"unknown verifier {bad[0]!r}; expected one of {', '.join(sorted(modes))}")
        return {str(ns): VerifierMode(str(mode)) for ns, mode in raw.items()}
    raise TypeError("expected namespace=mode pairs or a table")


def _boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _number(kind: type[int] | type[float]) -> Any:
    def convert(raw: object) -> int | float:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise TypeError(f"expected a number, got {type(raw).__name__}")
        value = kind(raw.strip()) if isinstance(raw, str) else raw
        if kind is int and value != int(value):
            raise ValueError("expected a whole number")
        return kind(value)

    return convert


# Field annotations (strings under `from __future__ import annotations`) -> how to read a raw value.
_CONVERTERS: dict[str, Any] = {
    "str": str,
    "int": _number(int),
    "float": _number(float),
    "Path": Path,
    "LogFormat": LogFormat,
    "Fsync": Fsync,
    "OnModelChange": OnModelChange,
    "VerifierMode": VerifierMode,
    "BackendKind": BackendKind,
    "bool": _boolean,
    "Mapping[str, str]": _api_keys,
    "Mapping[str, VerifierMode]": _namespace_verifiers,
}


def _parse(f: dataclasses.Field[Any], raw: object, origin: str) -> object:
    try:
        return _CONVERTERS[str(f.type)](raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{origin}: cannot read {raw!r} as {f.name}: {exc}") from exc


def _parse_api_keys(raw: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        tenant, sep, key = pair.partition("=")
        if not sep or not tenant.strip() or not key.strip():
            raise ValueError("expected tenant=key pairs separated by commas")
        keys[key.strip()] = tenant.strip()
    return keys


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per setting, defaulting to None so that "not given" is distinguishable."""
    parser.add_argument("--config", type=Path, default=None, help=f"TOML settings file (or {env_name('config')})")
    for f in dataclasses.fields(Settings):
        if str(f.type) == "bool":  # a switch: `--repair` alone turns it on
            parser.add_argument(flag_name(f.name), dest=f.name, action="store_const", const="true", default=None,
                                help=f.metadata.get("help"))
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, help=f.metadata.get("help"))


def load_settings(
    *, flags: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Merges the layers, later ones winning: defaults, TOML file, environment, flags.

    Args:
        flags: parsed command-line values by setting name; None values are "not given".
        environ: the environment (defaults to os.environ).
        config_file: a TOML file; else CACHESVC_CONFIG if set.

    Raises:
        ValueError: an unknown key in the file, an unparsable value, or settings that fail validation.
    """
    env = os.environ if environ is None else environ
    known = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, object] = {}
    path = config_file if config_file is not None else (Path(env[env_name("config")]) if env_name("config") in env
                                                        else None)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: cannot read settings: {exc}") from exc
        for key, raw in data.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"{path}: unknown setting {key!r}")
            values[name] = _parse(known[name], raw, str(path))
    for name, f in known.items():
        if env_name(name) in env:
            values[name] = _parse(f, env[env_name(name)], env_name(name))
    for name, raw in (flags or {}).items():
        if raw is not None and name in known:
            values[name] = _parse(known[name], raw, flag_name(name))
    return Settings(**values)  # type: ignore[arg-type]


def parse_argv(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="cachesvc serve")
    add_flags(parser)
    args = vars(parser.parse_args(argv))
    return load_settings(flags=args, config_file=args.pop("config"))
