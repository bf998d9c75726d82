// A fast OpenAI-compatible upstream for the side-by-side benchmark (issue 8): Node.js, no dependencies,
// so the mock costs little CPU and is the same for every gateway measured against it.
//
//   node bench/mock_upstream.js --port 9100 --latency-ms 0 --chunks 64 --chunk-interval-ms 20
//
// GET /health, GET /v1/models, POST /v1/chat/completions (stream or not; usage always reported, in
// the last chunk when stream_options.include_usage is set). --latency-ms delays every answer (before
// the first byte); a stream sends --chunks content chunks, --chunk-interval-ms apart.
"use strict";
const http = require("http");

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : (process.env[`MOCK_${name.toUpperCase().replace(/-/g, "_")}`] ?? fallback);
}

const PORT = Number(option("port", "9100"));
const HOST = option("host", "127.0.0.1");
const LATENCY_MS = Number(option("latency-ms", "0"));
const CHUNKS = Number(option("chunks", "64"));
const INTERVAL_MS = Number(option("chunk-interval-ms", "20"));
const MODEL = option("model", "bench-model");
const PROMPT_TOKENS = 12;
const COMPLETION_TOKENS = 16;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let counter = 0;

function json(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(data) });
  res.end(data);
}

function usage(completion) {
  return { prompt_tokens: PROMPT_TOKENS, completion_tokens: completion, total_tokens: PROMPT_TOKENS + completion };
}

async function completion(req, res, body) {
  const id = `chatcmpl-mock${++counter}`;
  const created = Math.floor(Date.now() / 1000);
  const model = body.model || MODEL;
  if (LATENCY_MS > 0) await sleep(LATENCY_MS);
  if (!body.stream) {
    return json(res, 200, {
      id, object: "chat.completion", created, model,
      choices: [{ index: 0, message: { role: "assistant", content: "word ".repeat(COMPLETION_TOKENS).trim() },
                  finish_reason: "stop" }],
      usage: usage(COMPLETION_TOKENS),
    });
  }
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
  let closed = false;
  res.on("close", () => { closed = true; });
  const send = (obj) => res.write(`data: ${JSON.stringify(obj)}\n\n`);
  const chunk = (delta, finish) => ({
    id, object: "chat.completion.chunk", created, model,
    choices: [{ index: 0, delta, finish_reason: finish }],
  });
  send(chunk({ role: "assistant", content: "" }, null));
  for (let i = 0; i < CHUNKS && !closed; i++) {
    if (i > 0 && INTERVAL_MS > 0) await sleep(INTERVAL_MS);
    send(chunk({ content: `w${i} ` }, null));
  }
  if (closed) return;
  send(chunk({}, "stop"));
  if (body.stream_options && body.stream_options.include_usage) {
    send({ id, object: "chat.completion.chunk", created, model, choices: [], usage: usage(CHUNKS) });
  }
  res.end("data: [DONE]\n\n");
}

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/health") return json(res, 200, { status: "ok" });
  if (req.method === "GET" && req.url === "/v1/models") {
    return json(res, 200, { object: "list", data: [{ id: MODEL, object: "model", owned_by: "mock" }] });
  }
  if (req.method === "POST" && req.url === "/v1/chat/completions") {
    const parts = [];
    req.on("data", (part) => parts.push(part));
    req.on("end", () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(parts).toString() || "{}");
      } catch {
        return json(res, 400, { error: { message: "malformed JSON", type: "invalid_request_error" } });
      }
      completion(req, res, body).catch((err) => { res.destroy(err); });
    });
    return;
  }
  json(res, 404, { error: { message: "no such route", type: "invalid_request_error" } });
});
server.keepAliveTimeout = 60_000;
server.listen(PORT, HOST, () => {
  process.stdout.write(`mock upstream on http://${HOST}:${PORT} (latency ${LATENCY_MS} ms, ${CHUNKS} chunks every ${INTERVAL_MS} ms)\n`);
});
