"""Prometheus metrics: one registry per server (no module-level state), served on /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cachesvc.core.stats import CounterBook
from cachesvc.records import Usage

# 0.125 and 0.15 resolve the overload bound (queueing budget + one long model run, ~124 ms with the defaults here).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.125, 0.15, 0.2, 0.5, 1.0, 2.0, 5.0)


class _CoreCollector(Collector):
    """Reads core's counters at scrape time, so nothing is counted twice."""

    def __init__(self, counters: CounterBook, usage: Callable[[], Usage], queue_depth: Callable[[], int]) -> None:
        self._counters = counters
        self._usage = usage
        self._queue_depth = queue_depth

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        # Labelled by tenant only: namespace names are the callers' own data (and unbounded in number); each
        # tenant reads its namespaces through the Stats RPC, which shows it nothing of other tenants.
        families = {
            name: CounterMetricFamily(f"cachesvc_{name}", help_text, labels=["tenant"])
            for name, help_text in (
                ("lookups", "Lookups answered"),
                ("hits", "Lookups answered with a cached completion"),
                ("exact_hits", "Hits served by the exact path"),
                ("semantic_hits", "Hits served by similarity"),
                ("stores", "Completions stored"),
                ("ttl_evictions", "Entries removed because their TTL passed"),
                ("capacity_evictions", "Entries evicted to stay within the memory budget or entry cap"),
            )
        }
        saved = {
            "tokens_saved": CounterMetricFamily("cachesvc_tokens_saved",
                                                "LLM prompt + completion tokens of the entries served as hits",
                                                labels=["tenant"]),
            "cost_saved_usd": CounterMetricFamily("cachesvc_cost_saved_usd",
                                                  "LLM cost of the entries served as hits, US dollars",
                                                  labels=["tenant"]),
        }
        for tenant, c in self._counters.by_tenant().items():
            for name, family in (families | saved).items():
                family.add_metric([tenant], getattr(c, name))
        yield from families.values()
        yield from saved.values()
        rejections = CounterMetricFamily("cachesvc_verifier_rejections",
                                         "Candidates above the threshold that the hit verifier rejected, by reason",
                                         labels=["tenant", "reason"])
        for (tenant, reason), count in self._counters.rejections_by_tenant().items():
            rejections.add_metric([tenant, reason.value], count)
        yield rejections
        usage = self._usage()
        yield GaugeMetricFamily("cachesvc_entries", "Entries held", value=usage.entries)
        yield GaugeMetricFamily("cachesvc_bytes", "Bytes accounted against the budget", value=usage.bytes)
        yield GaugeMetricFamily("cachesvc_embed_queue_depth", "Prompts waiting for the model",
                                value=self._queue_depth())


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.request_seconds = Histogram(
            "cachesvc_request_seconds", "gRPC call latency", ["method", "code"], buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.lookup_similarity = Histogram(
            "cachesvc_lookup_best_similarity", "Best candidate similarity of semantic lookups", ["outcome"],
            buckets=(0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0), registry=registry,
        )
        self.embed_seconds = Histogram(
            "cachesvc_embed_seconds", "Embedding time seen by lookups", buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.up = Gauge("cachesvc_up", "1 while the server is serving", registry=registry)

    def watch_core(self, counters: CounterBook, usage: Callable[[], Usage], queue_depth: Callable[[], int]) -> None:
        self.registry.register(_CoreCollector(counters, usage, queue_depth))


def new_metrics() -> ServerMetrics:
    return ServerMetrics(CollectorRegistry())

