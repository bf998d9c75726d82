"""The simulator's Ollama dialect over HTTP: Ollama's native /api shapes, next to the OpenAI routes."""
import httpx
import orjson


def ndjson(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in response.text.splitlines() if line]


def test_tags_version_and_ps_use_ollama_shapes(ollama_sim):
    tags = httpx.get(f"{ollama_sim.url}/api/tags").json()["models"]
    assert [(m["name"], m["model"]) for m in tags] == [("sim-small", "sim-small"), ("sim-large", "sim-large")]
    assert all(m["size"] > 0 and len(m["digest"]) == 64 for m in tags)
    assert httpx.get(f"{ollama_sim.url}/api/version").json()["version"]
    assert httpx.get(f"{ollama_sim.url}/api/ps").json() == {"models": []}


def test_pull_streams_progress_then_serves_the_model_until_reset(ollama_sim):
    events = ndjson(httpx.post(f"{ollama_sim.url}/api/pull", json={"model": "tiny:1b"}))
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    completed = [e["completed"] for e in events if "completed" in e]
    assert completed == sorted(completed) and completed[-1] == events[1]["total"]
    chat = {"model": "tiny:1b", "messages": [{"role": "user", "content": "echo: ok"}]}
    answer = httpx.post(f"{ollama_sim.url}/v1/chat/completions", json=chat).json()
    assert answer["choices"][0]["message"]["content"] == "ok"
    ollama_sim.reset()
    assert httpx.post(f"{ollama_sim.url}/v1/chat/completions", json=chat).status_code == 404


def test_a_missing_model_fails_inside_the_pull_stream(ollama_sim):
    events = ndjson(httpx.post(f"{ollama_sim.url}/api/pull", json={"model": "missing-model"}))
    assert events == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
    assert "missing-model" not in [m["name"] for m in httpx.get(f"{ollama_sim.url}/api/tags").json()["models"]]


def test_generate_without_prompt_loads_and_keep_alive_zero_unloads(ollama_sim):
    for keep_alive, reason, loaded in [("5m", "load", ["sim-large"]), ("0s", "unload", []), (-1, "load", ["sim-large"]),
                                       (0, "unload", [])]:
        answer = httpx.post(f"{ollama_sim.url}/api/generate", json={"model": "sim-large", "keep_alive": keep_alive})
        assert answer.json()["done_reason"] == reason
        assert [m["name"] for m in httpx.get(f"{ollama_sim.url}/api/ps").json()["models"]] == loaded
        assert ollama_sim.stats()["loaded"] == loaded
    missing = httpx.post(f"{ollama_sim.url}/api/generate", json={"model": "nope"})
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'nope' not found"})


def test_the_openai_dialect_has_no_native_api(sim):
    response = httpx.get(f"{sim.url}/api/tags")
    assert response.status_code == 404


def test_a_held_pull_waits_after_its_first_step_until_released(ollama_sim):
    ollama_sim.configure(pull_hold=True)
    with httpx.Client(timeout=10) as client, client.stream("POST", f"{ollama_sim.url}/api/pull", json={"model": "tiny:1b"}) as response:
        lines = response.iter_lines()
        assert orjson.loads(next(lines)) == {"status": "pulling manifest"}
        first = orjson.loads(next(lines))
        assert first["completed"] == first["total"] // 4
        assert "tiny:1b" not in [m["name"] for m in httpx.get(f"{ollama_sim.url}/api/tags").json()["models"]]
        ollama_sim.configure(pull_hold=False)
        rest = [orjson.loads(line) for line in lines if line]
    assert rest[-1] == {"status": "success"} and [e["completed"] for e in rest if "completed" in e][-1] == first["total"]
    assert "tiny:1b" in [m["name"] for m in httpx.get(f"{ollama_sim.url}/api/tags").json()["models"]]
