-- wrk script for the side-by-side benchmark: POST a small non-streamed chat completion.
-- Set the key with the API_KEY environment variable (sent as a bearer token), or several with API_KEYS
-- (comma-separated, used in turn: one tenant each), the model with MODEL.
-- At the end it prints one line "WRK_JSON {...}" (counts, latency percentiles in µs, errors by kind)
-- for bench/run.py; wrk itself reports "Non-2xx or 3xx responses": a run that prints it is not a clean run.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("API_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
wrk.body = string.format(
  '{"model": "%s", "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 16}',
  os.getenv("MODEL") or "bench-model"
)

local keys = {}
for k in string.gmatch(os.getenv("API_KEYS") or "", "[^,]+") do
  table.insert(keys, k)
end
if #keys > 0 then
  local requests, turn = {}, 0
  request = function()
    turn = turn % #keys + 1
    if not requests[turn] then
      local headers = {}
      for name, value in pairs(wrk.headers) do
        headers[name] = value
      end
      headers["Authorization"] = "Bearer " .. keys[turn]
      requests[turn] = wrk.format(nil, nil, headers, wrk.body)
    end
    return requests[turn]
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
