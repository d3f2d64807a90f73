"""Settings: defaults < TOML < environment < flags, validated, secrets redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachesvc.config import Settings, load_settings, parse_argv


def test_layers_in_order(tmp_path: Path) -> None:
    config = tmp_path / "cachesvc.toml"
    config.write_text('port = 6000\nmin_similarity = 0.8\nmax_entries = 10\nmodel_dir = "/models/x"\n')
    env = {"CACHESVC_PORT": "7000", "CACHESVC_MIN_SIMILARITY": "0.85"}
    settings = load_settings(flags={"port": "8000", "host": None}, environ=env, config_file=config)
    assert settings.port == 8000  # flag beats env beats file
    assert settings.min_similarity == 0.85  # env beats file
    assert settings.max_entries == 10  # file beats default
    assert settings.model_dir == Path("/models/x")
    assert settings.host == Settings().host  # a flag left unset is "not given", not empty


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("top_k = 9\n")
    assert load_settings(environ={"CACHESVC_CONFIG": str(config)}).top_k == 9


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CACHESVC_MIN_SIMILARITY": "1.5"}, "min_similarity 1.5 is not a cosine similarity"),
        ({"CACHESVC_MIN_SIMILARITY": "nan"}, "min_similarity nan"),
        ({"CACHESVC_PORT": "70000"}, "port 70000"),
        ({"CACHESVC_PORT": "eighty"}, "CACHESVC_PORT: cannot read 'eighty' as port"),
        ({"CACHESVC_MAX_ENTRIES": "2.5"}, "cannot read '2.5' as max_entries"),
        ({"CACHESVC_DEFAULT_TTL": "-1"}, "default_ttl must be >= 0"),
        ({"CACHESVC_API_KEYS": "no-equals-sign"}, "tenant=key"),
        ({"CACHESVC_LOG_FORMAT": "xml"}, "log_format"),
    ],
)
def test_invalid_values_are_rejected_with_the_setting_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_settings(environ=env)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="unknown setting 'prot'"):
        load_settings(environ={}, config_file=config)


def test_api_keys_from_env_and_file_are_redacted(tmp_path: Path) -> None:
    settings = load_settings(environ={"CACHESVC_API_KEYS": "acme=k1, globex=k2"})
    assert settings.api_keys == {"k1": "acme", "k2": "globex"}
    shown = settings.redacted()
    assert shown["api_keys"] == "<2 redacted>" and "k1" not in str(shown)
    config = tmp_path / "c.toml"
    config.write_text('[api_keys]\nacme = "secret-a"\n')
    assert load_settings(environ={}, config_file=config).api_keys == {"secret-a": "acme"}


def test_flags_spelling() -> None:
    settings = parse_argv(["--host", "0.0.0.0", "--port", "1234", "--data-dir", "/d", "--model-dir", "/m",
                           "--min-similarity", "0.95", "--default-ttl", "60", "--max-bytes", "1000000",
                           "--max-entries", "5"])
    assert (settings.host, settings.port, settings.data_dir, settings.model_dir) == ("0.0.0.0", 1234, Path("/d"),
                                                                                     Path("/m"))
    assert (settings.min_similarity, settings.default_ttl, settings.max_bytes, settings.max_entries) == \
        (0.95, 60.0, 1_000_000, 5)


def test_namespace_verifiers_from_flags_env_and_file(tmp_path: Path) -> None:
    from cachesvc.core.verify import VerifierMode

    settings = load_settings(environ={"CACHESVC_NAMESPACE_VERIFIERS": "support=off, billing=rules"})
    assert settings.namespace_verifiers == {"support": VerifierMode.OFF, "billing": VerifierMode.RULES}
    config = tmp_path / "c.toml"
    config.write_text('[namespace_verifiers]\nlegal = "model"\n')
    assert load_settings(environ={}, config_file=config).namespace_verifiers == {"legal": VerifierMode.MODEL}
    assert load_settings(environ={}, flags={"namespace_verifiers": "a=combined"}).namespace_verifiers == {
        "a": VerifierMode.COMBINED}
    with pytest.raises(ValueError, match=r"namespace_verifiers.*unknown verifier 'strict'"):
        load_settings(environ={"CACHESVC_NAMESPACE_VERIFIERS": "support=strict"})
    with pytest.raises(ValueError, match="namespace=mode pairs"):
        load_settings(environ={"CACHESVC_NAMESPACE_VERIFIERS": "support"})
