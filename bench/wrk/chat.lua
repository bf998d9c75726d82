-- wrk script for the side-by-side benchmark: POST a small non-streamed chat completion.
-- Set the key with the API_KEY environment variable (sent as a bearer token), the model with MODEL.
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
-- wrk itself reports "Non-2xx or 3xx responses"; a run that prints it is not a clean run.
