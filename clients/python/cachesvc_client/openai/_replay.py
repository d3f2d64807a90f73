"""The SDK's own types, out of the cache (hits) and around the LLM's stream (misses).

A hit becomes a `ChatCompletion`, or a stream of `ChatCompletionChunk`s in the shape the SDK's own accumulator
(`openai.lib.streaming.chat.ChatCompletionStreamState`) assembles: a role chunk, content pieces, a final chunk with
`finish_reason="stop"`, then a usage chunk when `stream_options.include_usage` was asked. A miss's stream is
passed through chunk by chunk while the same accumulator assembles the answer to store.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx2 as http  # the openai SDK's HTTP client
from openai import AsyncStream, Stream
from openai.lib.streaming.chat import ChatCompletionStreamState, ParsedChatCompletionSnapshot
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat import chat_completion as cc
from openai.types.chat import chat_completion_chunk as ccc

from cachesvc_client.openai._types import CacheInfo, attach

# Words with their trailing space, a few per chunk: the pieces a replayed answer is streamed in.
_WORDS = re.compile(r"\S+\s*|\s+")
WORDS_PER_CHUNK = 4


def _zero_usage() -> CompletionUsage:
    return CompletionUsage(prompt_tokens=0, completion_tokens=0, total_tokens=0)


def completion_of(*, entry_id: str, text: str, model: str, info: CacheInfo,
                  tool_calls: list[dict[str, Any]] | None = None) -> ChatCompletion:
    """A cached answer as the SDK's ChatCompletion (no tokens used); `tool_calls` as stored (JSON objects)."""
    message = ChatCompletionMessage.model_validate(
        {"role": "assistant", "content": text or None if tool_calls else text, "tool_calls": tool_calls or None})
    reply = ChatCompletion(
        id=f"chatcmpl-cache-{entry_id}", object="chat.completion", created=int(time.time()), model=model,
        choices=[cc.Choice(index=0, finish_reason="tool_calls" if tool_calls else "stop", message=message)],
        usage=_zero_usage(),
    )
    attach(reply, info)
    return reply


def chunks_of(*, entry_id: str, text: str, model: str, include_usage: bool, info: CacheInfo,
              tool_calls: list[dict[str, Any]] | None = None) -> list[ChatCompletionChunk]:
    """A cached answer as the chunks of a stream (a cached tool call comes whole, in one chunk)."""
    created = int(time.time())

    def chunk(delta: ccc.ChoiceDelta | None, finish: bool = False, usage: CompletionUsage | None = None
              ) -> ChatCompletionChunk:
        reason: Literal["stop", "tool_calls"] | None = ("tool_calls" if tool_calls else "stop") if finish else None
        choices = [] if delta is None else [ccc.Choice(index=0, delta=delta, finish_reason=reason)]
        result = ChatCompletionChunk(id=f"chatcmpl-cache-{entry_id}", object="chat.completion.chunk",
                                     created=created, model=model, choices=choices, usage=usage)
        attach(result, info)
        return result

    words = _WORDS.findall(text)
    pieces = ["".join(words[i:i + WORDS_PER_CHUNK]) for i in range(0, len(words), WORDS_PER_CHUNK)]
    chunks = [chunk(ccc.ChoiceDelta(role="assistant", content=""))]
    chunks += [chunk(ccc.ChoiceDelta(content=piece)) for piece in pieces]
    if tool_calls:
        chunks.append(chunk(ccc.ChoiceDelta.model_validate(
            {"tool_calls": [{"index": i, **call} for i, call in enumerate(tool_calls)]})))
    chunks.append(chunk(ccc.ChoiceDelta(), finish=True))
    if include_usage:
        chunks.append(chunk(None, usage=_zero_usage()))
    return chunks


def _synthetic_response() -> http.Response:
    request = http.Request("POST", "http://cachesvc.invalid/v1/chat/completions")
    return http.Response(200, request=request, headers={"content-type": "text/event-stream"})


class ReplayStream(Stream[ChatCompletionChunk]):
    """A cached answer as the SDK's `Stream`: iterate it, close it, use it as a context manager."""

    def __init__(self, chunks: list[ChatCompletionChunk], info: CacheInfo) -> None:
        # Not Stream.__init__: it needs a live HTTP response and client. Stream's methods read only these.
        self.response = _synthetic_response()
        self._chunks = chunks
        self._iterator = self.__stream__()
        attach(self, info)

    def __stream__(self) -> Iterator[ChatCompletionChunk]:
        yield from self._chunks


class AsyncReplayStream(AsyncStream[ChatCompletionChunk]):
    """A cached answer as the SDK's `AsyncStream`."""

    def __init__(self, chunks: list[ChatCompletionChunk], info: CacheInfo) -> None:
        self.response = _synthetic_response()
        self._chunks = chunks
        self._iterator = self.__stream__()
        attach(self, info)

    async def __stream__(self) -> AsyncIterator[ChatCompletionChunk]:
        for chunk in self._chunks:
            yield chunk


@dataclass(frozen=True, kw_only=True, slots=True)
class Assembled:
    """What a finished LLM stream (or a whole response) produced.

    Attributes:
        complete: The stream ran to its end (not abandoned, no error).
    """

    text: str | None
    finish_reason: str | None
    model: str | None
    response_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    refusal: bool
    tool_calls: bool
    complete: bool
    tool_calls_json: str | None = None  # the tool calls as a JSON list, when there are any


def assembled_from_completion(reply: ChatCompletion | ParsedChatCompletionSnapshot) -> Assembled:
    choice = reply.choices[0] if reply.choices else None
    message = choice.message if choice is not None else None
    usage = reply.usage
    return Assembled(
        text=message.content if message is not None else None,
        finish_reason=choice.finish_reason if choice is not None else None,
        model=reply.model, response_id=reply.id,
        prompt_tokens=usage.prompt_tokens if usage is not None else None,
        completion_tokens=usage.completion_tokens if usage is not None else None,
        refusal=bool(message is not None and message.refusal),
        tool_calls=bool(message is not None and message.tool_calls),
        complete=True,
        tool_calls_json=json.dumps([call.model_dump(exclude_none=True) for call in message.tool_calls],
                                   separators=(",", ":")) if message is not None and message.tool_calls else None,
    )


class StreamTap:
    """Assembles a passing stream with the SDK's own accumulator; no I/O."""

    def __init__(self, *, hide_usage: bool) -> None:
        """Args:
            hide_usage: drop the final usage chunk from what the caller sees (the wrapper asked for it to
                account the cost; the caller did not).
        """
        self._state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
        self._seen = False
        self._usage: CompletionUsage | None = None
        self._hide_usage = hide_usage

    def see(self, chunk: ChatCompletionChunk) -> bool:
        """Feeds a chunk; returns whether the caller should see it."""
        self._seen = True
        if chunk.usage is not None:
            self._usage = chunk.usage
        self._state.handle_chunk(chunk)
        return not (self._hide_usage and not chunk.choices and chunk.usage is not None)

    def result(self, *, complete: bool) -> Assembled:
        if not self._seen:
            return Assembled(text=None, finish_reason=None, model=None, response_id=None, prompt_tokens=None,
                             completion_tokens=None, refusal=False, tool_calls=False, complete=False)
        # The snapshot, not get_final_completion(): that one parses, and raises on a `length` finish.
        final = assembled_from_completion(self._state.current_completion_snapshot)
        usage = self._usage
        return Assembled(
            text=final.text, finish_reason=final.finish_reason, model=final.model, response_id=final.response_id,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            completion_tokens=usage.completion_tokens if usage is not None else None,
            refusal=final.refusal, tool_calls=final.tool_calls, complete=complete,
            tool_calls_json=final.tool_calls_json,
        )


class PassThroughStream(Stream[ChatCompletionChunk]):
    """The LLM's stream, passed through as it arrives; `finish` runs once, when it ends or is abandoned."""

    def __init__(self, inner: Stream[ChatCompletionChunk], tap: StreamTap, info: CacheInfo,
                 finish: Callable[[Assembled], None]) -> None:
        self.response = inner.response
        self._inner = inner
        self._tap = tap
        self._finish = finish
        self._ended = False
        self._iterator = self.__stream__()
        attach(self, info)

    def _end(self, *, complete: bool) -> None:
        if not self._ended:
            self._ended = True
            self._finish(self._tap.result(complete=complete))

    def __stream__(self) -> Iterator[ChatCompletionChunk]:
        complete = False
        try:
            for chunk in self._inner:
                if self._tap.see(chunk):
                    yield chunk
            complete = True
        finally:
            self._end(complete=complete)

    def close(self) -> None:
        self._iterator.close()  # type: ignore[attr-defined]  # an abandoned stream ends here (never stored)
        self._inner.close()
        self._end(complete=False)


class AsyncPassThroughStream(AsyncStream[ChatCompletionChunk]):
    """The async twin of PassThroughStream."""

    def __init__(self, inner: AsyncStream[ChatCompletionChunk], tap: StreamTap, info: CacheInfo,
                 finish: Callable[[Assembled], Awaitable[None]]) -> None:
        self.response = inner.response
        self._inner = inner
        self._tap = tap
        self._finish = finish
        self._ended = False
        self._iterator = self.__stream__()
        attach(self, info)

    async def _end(self, *, complete: bool) -> None:
        if not self._ended:
            self._ended = True
            await self._finish(self._tap.result(complete=complete))

    async def __stream__(self) -> AsyncIterator[ChatCompletionChunk]:
        complete = False
        try:
            async for chunk in self._inner:
                if self._tap.see(chunk):
                    yield chunk
            complete = True
        finally:
            await self._end(complete=complete)

    async def close(self) -> None:
        await self._iterator.aclose()  # type: ignore[attr-defined,unused-ignore]
        await self._inner.close()
        await self._end(complete=False)
