// Streaming load generator for the side-by-side benchmark (issue 8): Node.js, no dependencies.
//
//   node bench/stream_client.js --url http://127.0.0.1:8000/v1/chat/completions --streams 1000 \
//        [--keys sk-a,sk-b] [--model bench-model] [--chunks 64] [--duration 0] [--timeout 120]
//
// Opens --streams concurrent SSE chat completions at once (with --duration S: each of the --streams
// workers opens a new stream as soon as its previous one ends, until S seconds have passed). Per stream it
// measures the time to the first content chunk (TTFT), the gaps between content chunks, and counts them:
// a stream that errors, times out or carries fewer than --chunks content chunks is "lost".
// Prints one JSON object on stdout: counts, TTFT and gap percentiles in ms, and the run's duration.
// With --hold-ready, prints "ready" on stderr once every stream has had its first chunk (the harness then
// samples the gateway's memory while they are all open).
"use strict";
const http = require("http");

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const url = new URL(option("url", "http://127.0.0.1:9100/v1/chat/completions"));
const STREAMS = Number(option("streams", "1"));
const KEYS = option("keys", "").split(",").filter(Boolean);
const MODEL = option("model", "bench-model");
const CHUNKS = Number(option("chunks", "64"));
const DURATION_S = Number(option("duration", "0"));
const TIMEOUT_S = Number(option("timeout", "120"));
const HOLD_READY = process.argv.includes("--hold-ready");

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
const body = JSON.stringify({
  model: MODEL, stream: true, max_tokens: CHUNKS * 2,
  messages: [{ role: "user", content: "Say something short." }],
});
const CONTENT = /"content":\s?"[^"]/; // a non-empty content delta (some servers put a space after the colon)
const now = () => Number(process.hrtime.bigint()) / 1e6; // ms

const ttfts = [];
const gaps = [];
let ok = 0;
let lost = 0;
let errors = 0;
let firstSeen = 0;
let launched = 0;
const errorSamples = new Set();

function oneStream(index) {
  return new Promise((resolve) => {
    const key = KEYS.length ? KEYS[index % KEYS.length] : "";
    const headers = { "content-type": "application/json", "content-length": Buffer.byteLength(body),
                      accept: "text/event-stream" };
    if (key) headers.authorization = `Bearer ${key}`;
    const started = now();
    let last = null;
    let chunks = 0;
    let done = false;
    let buffer = "";
    let sawFirst = false;
    const finish = (error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (error) {
        errors++;
        if (errorSamples.size < 5) errorSamples.add(String(error).slice(0, 200));
      }
      if (!error && chunks >= CHUNKS) ok++;
      else lost++;
      resolve();
    };
    const timer = setTimeout(() => { req.destroy(new Error("timeout")); }, TIMEOUT_S * 1000);
    const req = http.request({ host: url.hostname, port: url.port, path: url.pathname, method: "POST", headers, agent },
      (res) => {
        if (res.statusCode !== 200) {
          let text = "";
          res.on("data", (d) => { text += d; });
          res.on("end", () => finish(`HTTP ${res.statusCode}: ${text}`));
          res.on("error", finish);
          return;
        }
        res.setEncoding("utf8");
        res.on("data", (data) => {
          buffer += data;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            // Content chunks only: the role chunk carries "content":"" and the usage/finish chunks none.
            if (!CONTENT.test(event)) {
              if (event.includes('"error"')) finish(event.slice(0, 200));
              continue;
            }
            const t = now();
            if (last === null) {
              ttfts.push(t - started);
              if (!sawFirst) {
                sawFirst = true;
                if (++firstSeen === STREAMS && HOLD_READY) process.stderr.write("ready\n");
              }
            } else gaps.push(t - last);
            last = t;
            chunks++;
          }
        });
        res.on("end", () => finish(null));
        res.on("error", finish);
        res.on("aborted", () => finish("aborted"));
      });
    req.on("error", finish);
    req.end(body);
  });
}

function pct(values, q) {
  if (!values.length) return null;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function worker(deadline) {
  do {
    await oneStream(launched++);
  } while (DURATION_S > 0 && now() < deadline);
}

async function main() {
  const started = now();
  const deadline = started + DURATION_S * 1000;
  await Promise.all(Array.from({ length: STREAMS }, () => worker(deadline)));
  const round = (v) => (v === null ? null : Math.round(v * 1000) / 1000);
  process.stdout.write(JSON.stringify({
    streams: ok + lost, ok, lost, errors, chunks_expected: CHUNKS,
    ttft_p50: round(pct(ttfts, 0.5)), ttft_p99: round(pct(ttfts, 0.99)),
    gap_p50: round(pct(gaps, 0.5)), gap_p99: round(pct(gaps, 0.99)), gap_max: round(pct(gaps, 1)),
    seconds: round((now() - started) / 1000), error_samples: [...errorSamples],
  }) + "\n");
  agent.destroy();
}

main();
