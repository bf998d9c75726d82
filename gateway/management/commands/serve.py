"""Start the platform: the built-in local node (if enabled) and the ASGI server."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run the platform (API, console, Web Chat) and, in the embedded default, the local model node."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")))
        parser.add_argument("--no-local-node", action="store_true", help="do not start the built-in model node")

    def handle(self, *args, host, port, workers, no_local_node, **options):
        node = None
        if settings.LOCAL_NODE_ENABLED and not no_local_node:
            node = self._start_local_node()
        self.stdout.write(self.style.SUCCESS(f"Platform on http://{host}:{port}  (console: http://{host}:{port}/console/)"))
        try:
            uvicorn.run(
                "config.asgi:application",
                host=host,
                port=port,
                workers=workers,
                loop="uvloop",
                http="httptools",
                lifespan="on",
                access_log=False,
                log_level="info",
            )
        finally:
            if node is not None:
                node.terminate()
                try:
                    node.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.kill()

    def _start_local_node(self) -> subprocess.Popen:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise CommandError("llama-cpp-python is not installed: run `make run` (it builds it once).") from None
        port = settings.LOCAL_NODE_PORT
        self.stdout.write(f"Starting the local model node on 127.0.0.1:{port} …")
        proc = subprocess.Popen(
            [
                sys.executable, "manage.py", "run_local_node", "--host", "127.0.0.1", "--port", str(port),
                "--alias", settings.LOCAL_NODE_MODEL, "--threads", str(settings.LOCAL_NODE_THREADS),
            ],
            cwd=settings.BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()

        def pump() -> None:  # forward the node's output, note when it is listening
            for line in proc.stdout:
                sys.stdout.write(f"[local-node] {line}")
                if "listening on" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 180
        while not ready.wait(0.2):
            if proc.poll() is not None:
                raise CommandError(f"the local node exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                proc.kill()
                raise CommandError("the local node did not start within 180 s")
        return proc
