"""Talking to a node server over HTTP: the ``client`` fixture and request helpers."""
from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import Simulator

WITH_USAGE = {"include_usage": True}


def chat(content: Any, **fields: Any) -> dict[str, Any]:
    return {"model": "sim-small", "messages": [{"role": "user", "content": content}], **fields}


@pytest.fixture
async def client(sim):
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as c:
        yield c


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def sse(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[Any]:
    """Every ``data:`` event of a 200 stream: decoded chunks, then the string "[DONE]"."""
    events: list[Any] = []
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line:
                assert line.startswith("data: ")
                events.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
    return events


def contents(events: list[Any]) -> list[str]:
    """The text of a chat stream's token chunks (not the opening role chunk)."""
    deltas = [e["choices"][0]["delta"] for e in events[1:] if e != "[DONE]" and e["choices"]]
    return [d["content"] for d in deltas if "content" in d]


async def wait_idle(sim, timeout: float = 3.0) -> dict[str, Any]:
    """The simulator's stats once no request is in flight any more."""
    deadline = time.monotonic() + timeout
    while (stats := sim.stats())["active"] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert stats["active"] == 0, stats
    return stats


@pytest.fixture(scope="session")
def ollama_process():
    from tests.conftest import start_simulator

    sim = start_simulator("--dialect", "ollama")
    yield sim
    sim.process.stop()


@pytest.fixture
def ollama_sim(ollama_process):
    """A simulator speaking the Ollama dialect, reset: pulled models forgotten, nothing loaded."""
    ollama_process.reset()
    return ollama_process


# --- the Thox dialect: inference on one port, the cluster API on another ---------------------

THOX_MEMBERS = ("--members", "3", "--member-gpus", "1,2", "--member-hardware", "Jetson Orin NX 16GB,Jetson AGX Orin 64GB")


@dataclass
class ThoxSimulator(Simulator):
    cluster_url: str = ""

    @property
    def cluster(self) -> dict:
        return self.stats()["cluster"]


def start_thox_simulator(*extra: str, ports: tuple[int, int] | None = None) -> ThoxSimulator:
    """A simulated 3-member cluster (node-001: 1 GPU, node-002: 2 GPUs AGX 64GB, node-003: 1 GPU), serving sim-small and sim-large."""
    from tests.conftest import SIM_MEASUREMENT, Process, attestation_pki, free_port

    pki = attestation_pki()  # its inference API attests like any node, with the test identity
    identity = ("--attestation-key", str(pki / "simulator.key"), "--attestation-certs", str(pki / "simulator.pem"),
                "--attestation-measurement", SIM_MEASUREMENT)
    port, cluster_port = ports or (free_port(), free_port())
    while cluster_port == port:
        cluster_port = free_port()
    process = Process(
        [sys.executable, "manage.py", "run_node_simulator", "--dialect", "thox", "--port", str(port),
         "--cluster-port", str(cluster_port), "--models", "sim-small,sim-large", *THOX_MEMBERS, *identity, *extra],
        ready="thox cluster API listening on",
    )
    return ThoxSimulator(url=f"http://127.0.0.1:{port}", process=process, cluster_url=f"http://127.0.0.1:{cluster_port}")


@pytest.fixture(scope="session")
def thox_process():
    sim = start_thox_simulator()
    yield sim
    sim.process.stop()


@pytest.fixture
def thox_sim(thox_process) -> ThoxSimulator:
    """The simulated cluster, reset: every member online, idle, nothing loaded or pulled."""
    thox_process.reset()
    return thox_process
