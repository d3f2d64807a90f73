/**
 * A local OpenAI-compatible stub of POST /v1/chat/completions (JSON and SSE), for the real `openai` SDK.
 *
 * It answers "Answer to: <last user text>" and records every request. Markers in the last user text change the
 * answer: "[length]" ends it with finish_reason "length", "[tool]" answers with a tool call, "[refusal]" refuses.
 * A test can hold every answer until it opens the gate again (`hold()` / `open()`).
 */

import http from "node:http";
import type net from "node:net";

export interface Stub {
  readonly baseURL: string;
  /** Request bodies received, in order. */
  readonly requests: Record<string, unknown>[];
  /** Answers to requests received from now on wait until `open()`. */
  hold(): void;
  /** Sends the held answers, and answers at once again. */
  open(): void;
  close(): Promise<void>;
}

interface Message {
  role: string;
  content: unknown;
}

function lastUserText(body: Record<string, unknown>): string {
  const messages = body["messages"] as Message[];
  const content = messages[messages.length - 1]?.content;
  if (typeof content === "string") {
    return content;
  }
  return (content as { type: string; text?: string }[]).map((part) => part.text ?? `<${part.type}>`).join("\n");
}

function words(text: string): string[] {
  return text.match(/\S+\s*/g) ?? [];
}

export async function startStub(): Promise<Stub> {
  const requests: Record<string, unknown>[] = [];
  let sequence = 0;
  let gate: Promise<void> = Promise.resolve();
  let openGate = (): void => undefined;
  const server = http.createServer((request, response) => {
    let raw = "";
    request.setEncoding("utf8");
    request.on("data", (text: string) => (raw += text));
    request.on("end", async () => {
      await gate;
      if (request.method !== "POST" || request.url !== "/v1/chat/completions") {
        response.writeHead(404).end();
        return;
      }
      const body = JSON.parse(raw) as Record<string, unknown>;
      requests.push(body);
      sequence += 1;
      const prompt = lastUserText(body);
      const id = `chatcmpl-stub-${sequence}`;
      const model = `${String(body["model"])}-2025-01-01`;
      const created = 1_700_000_000 + sequence;
      const content = prompt.includes("[tool]") || prompt.includes("[refusal]") ? null : `Answer to: ${prompt}`;
      const refusal = prompt.includes("[refusal]") ? "I can't help with that." : null;
      const toolCalls = prompt.includes("[tool]")
        ? [{ id: `call_${sequence}`, type: "function", function: { name: "lookup_weather", arguments: '{"city":"Paris"}' } }]
        : undefined;
      const finish = prompt.includes("[length]") ? "length" : toolCalls ? "tool_calls" : "stop";
      const usage = { prompt_tokens: 10, completion_tokens: words(content ?? "").length, total_tokens: 10 + words(content ?? "").length };
      if (body["stream"] !== true) {
        response.writeHead(200, { "content-type": "application/json" });
        response.end(JSON.stringify({
          id, object: "chat.completion", created, model,
          choices: [{ index: 0, message: { role: "assistant", content, refusal, ...(toolCalls ? { tool_calls: toolCalls } : {}) },
            finish_reason: finish, logprobs: null }],
          usage,
        }));
        return;
      }
      response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      const send = (delta: object, finishReason: string | null): void => {
        response.write(`data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model,
          choices: [{ index: 0, delta, finish_reason: finishReason, logprobs: null }] })}\n\n`);
      };
      send({ role: "assistant", content: "" }, null);
      for (const piece of words(content ?? "")) {
        send({ content: piece }, null);
      }
      if (refusal) {
        send({ refusal }, null);
      }
      if (toolCalls) {
        send({ tool_calls: toolCalls.map((call, index) => ({ index, ...call })) }, null);
      }
      send({}, finish);
      if ((body["stream_options"] as { include_usage?: boolean } | undefined)?.include_usage) {
        response.write(`data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model, choices: [], usage })}\n\n`);
      }
      response.end("data: [DONE]\n\n");
    });
  });
  const sockets = new Set<net.Socket>();
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    baseURL: `http://127.0.0.1:${port}/v1`,
    requests,
    hold: () => {
      gate = new Promise<void>((resolve) => (openGate = resolve));
    },
    open: () => {
      openGate();
      gate = Promise.resolve();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) {
          socket.destroy();
        }
        server.close(() => resolve());
      }),
  };
}
