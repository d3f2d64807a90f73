"""The request -> (scope, prompt) mapping of the openai wrappers; the TypeScript wrapper computes the same."""

from __future__ import annotations

from typing import Any

import pytest
from openai import NOT_GIVEN, omit
from openai.types.chat import ChatCompletionMessage

from cachesvc_client import Scope, context_key
from cachesvc_client.openai import CachePlan, CircuitBreaker, ModelPrice, Uncacheable, plan_request

SYSTEM = {"role": "system", "content": "Be brief."}


def plan(**params: Any) -> CachePlan | Uncacheable:
    params.setdefault("model", "gpt-4o-mini")
    params.setdefault("messages", [SYSTEM, {"role": "user", "content": "Hi"}])
    return plan_request(params, namespace="ns")


def test_a_fixed_request_maps_to_a_fixed_scope() -> None:
    """A golden value: the TypeScript wrapper's tests check the same request gives the same context."""
    result = plan(messages=[SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                            {"role": "user", "content": [{"type": "text", "text": "What is"},
                                                         {"type": "text", "text": "2 + 2?"}]}],
                  temperature=0, max_tokens=100, stream=True, user="u1", seed=7)
    assert result == CachePlan(
        scope=Scope(namespace="ns", model="gpt-4o-mini",
                    context="db71212dda83bb1cda186cea12e62a5a23e465ab8def4daab56c1df3d67c9704"),
        prompt="What is\n2 + 2?", model="gpt-4o-mini", stream=True, include_usage=False)
    assert result.scope.context == context_key(
        params={"temperature": 0, "max_tokens": 100, "seed": 7},
        messages=[SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])


def test_parameters_that_cannot_change_the_answer_are_left_out() -> None:
    base = plan(temperature=0)
    assert isinstance(base, CachePlan)
    same = plan(temperature=0, user="u", metadata={"a": "b"}, store=True, service_tier="flex", stream=False,
                stream_options={"include_usage": True}, timeout=3, extra_headers={"x": "y"}, top_p=None,
                seed=NOT_GIVEN, stop=omit, safety_identifier="s", prompt_cache_key="k")
    assert isinstance(same, CachePlan) and same.scope == base.scope and same.include_usage


@pytest.mark.parametrize("change", [
    {"temperature": 0.5}, {"max_tokens": 10}, {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"response_format": {"type": "json_object"}}, {"extra_body": {"top_k": 3}}, {"some_new_parameter": 1},
    {"messages": [{"role": "system", "content": "Be long."}, {"role": "user", "content": "Hi"}]},
    {"model": "gpt-4o"},
])
def test_what_changes_the_answer_changes_the_scope(change: dict[str, Any]) -> None:
    base, other = plan(temperature=0), plan(**{"temperature": 0, **change})
    assert isinstance(base, CachePlan) and isinstance(other, CachePlan) and other.scope != base.scope


def test_sdk_message_objects_hash_like_the_dicts_they_stand_for() -> None:
    assistant = ChatCompletionMessage(role="assistant", content="Hello!")
    as_object = plan(messages=[SYSTEM, assistant, {"role": "user", "content": "Hi"}])
    as_dict = plan(messages=[SYSTEM, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Hi"}])
    assert isinstance(as_object, CachePlan) and as_object == as_dict


@pytest.mark.parametrize(("params", "reason"), [
    ({"n": 2}, "n > 1"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}, "not from the"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "non-text"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
                   {"role": "user", "content": "Hi"}]}, "non-text"),
])
def test_uncacheable_requests(params: dict[str, Any], reason: str) -> None:
    result = plan(**params)
    assert isinstance(result, Uncacheable) and reason in result.reason
    assert isinstance(plan(n=1), CachePlan)


def test_a_parameter_without_a_canonical_form_is_refused_not_guessed() -> None:
    with pytest.raises(ValueError, match="temperature"):
        plan(temperature=float("nan"))


def test_the_breaker_opens_after_repeated_failures_and_probes_after_the_cool_down() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, cooldown_seconds=10, clock=lambda: now[0])
    assert breaker.allow() and not breaker.failure()
    assert breaker.allow() and breaker.failure()  # the second failure in a row opens it
    assert not breaker.allow()
    now[0] = 10.0
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    assert not breaker.failure()  # the probe failed: open again, for another cool-down
    assert not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.allow() and breaker.allow() and not breaker.is_open


def test_cost_from_the_price_table() -> None:
    assert ModelPrice(input_per_million=2.0, output_per_million=8.0).cost(1000, 500) == pytest.approx(0.006)
    with pytest.raises(ValueError):
        ModelPrice(input_per_million=-1, output_per_million=0)
