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


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _spec(help: str, *, secret: bool = False) -> Any:
    return {"help": help, "secret": secret}


@dataclass(frozen=True, kw_only=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata=_spec("address to listen on"))
    port: int = field(default=50051, metadata=_spec("gRPC port (0 = any free port)"))
    metrics_port: int = field(default=9464, metadata=_spec("Prometheus /metrics port on the same host (-1 = off)"))
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
    # 0.82 with verifier_min_score 0.50: chosen on the development domains (bench/RESULTS.md, "Hit quality across
    # domains"): at least the right hits of `rules` at 0.85 on every one, and more precise on adversarial pairs.
    recall_similarity: float = field(default=0.82, metadata=_spec(
        "default threshold while a verifier runs: cosine similarity in [0, 1] a candidate needs to be verified "
        "(and served if accepted); <= min_similarity"))
    default_ttl: float = field(default=0.0, metadata=_spec("TTL in seconds for stores that set none (0 = never)"))
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
    memo_size: int = field(default=4096, metadata=_spec("recent prompt vectors remembered (no re-embedding)"))
    hnsw_threshold: int = field(default=20_000, metadata=_spec("scope size at which search switches to HNSW"))
    api_keys: Mapping[str, str] = field(default_factory=dict, metadata=_spec(
        "API keys as tenant=key pairs, comma-separated (empty = no authentication, one tenant)", secret=True))
    log_format: LogFormat = field(default=LogFormat.TEXT, metadata=_spec("text or json (one line per request)"))
    log_level: str = field(default="INFO", metadata=_spec("DEBUG, INFO, WARNING or ERROR"))
    grace_seconds: float = field(default=10.0, metadata=_spec("how long shutdown waits for in-flight calls"))
    verifier_min_score: float = field(default=0.50, metadata=_spec(
        "the probability the learned model (verifier model or combined) must give a candidate to serve it, in "
        "[0, 1]; the shipped weights were tuned to 0.76 for QQP, which costs a third of the right hits elsewhere"))
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
        for name in ("default_ttl", "max_entries", "max_wait_ms"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        for name in ("snapshot_interval", "max_bytes", "top_k", "max_prompt_bytes", "max_completion_bytes",
                     "max_metadata_bytes", "sweep_interval", "embed_workers", "intra_op_threads", "max_batch_size",
                     "max_queue", "hnsw_threshold", "grace_seconds"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
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
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))

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
            elif isinstance(value, Path | StrEnum):
                value = str(value)
            shown[f.name] = value
        return shown


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
