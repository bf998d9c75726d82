"""Start the platform: the built-in local node (if enabled), the Stripe emulator (the embedded
default, when no Stripe key is configured) and the ASGI server."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config import server


class Command(BaseCommand):
    help = "Run the platform (API, console, Web Chat) and, in the embedded default, the local model node."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")))
        parser.add_argument("--no-local-node", action="store_true", help="do not start the built-in model node")
        parser.add_argument("--no-stripe-emulator", action="store_true", help="do not start the Stripe emulator")

    def handle(self, *args, host, port, workers, no_local_node, no_stripe_emulator, **options):
        children = []
        if settings.LOCAL_NODE_ENABLED and not no_local_node:
            children.append(self._start_local_node())
        if settings.STRIPE_EMULATOR and not no_stripe_emulator:
            children.append(self._start_stripe_emulator(port))
        self.stdout.write(self.style.SUCCESS(f"Platform on http://{host}:{port}  (console: http://{host}:{port}/console/)"))
        try:
            server.run(host=host, port=port, workers=workers)  # drains streams on SIGTERM (config/server.py)
        finally:
            for child in children:
                child.terminate()
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()

    def _start_local_node(self) -> subprocess.Popen:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise CommandError("llama-cpp-python is not installed: run `make run` (it builds it once).") from None
        port = settings.LOCAL_NODE_PORT
        self.stdout.write(f"Starting the local model node on 127.0.0.1:{port} …")
        command = [
            sys.executable, "manage.py", "run_local_node", "--host", "127.0.0.1", "--port", str(port),
            "--alias", settings.LOCAL_NODE_MODEL, "--threads", str(settings.LOCAL_NODE_THREADS),
        ]
        return self._start_child("local-node", command, ready_line="listening on", timeout=180)

    def _start_stripe_emulator(self, platform_port: int) -> subprocess.Popen:
        """The embedded default's Stripe: localstripe behind our front (billing/stripe_emulator),
        delivering signed webhooks to this platform, so top-ups work offline."""
        port = urlsplit(settings.STRIPE_API_BASE).port or 12111
        self.stdout.write(f"Starting the Stripe emulator on 127.0.0.1:{port} …")
        command = [
            sys.executable, "-m", "billing.stripe_emulator", "--port", str(port),
            "--webhook-url", f"http://127.0.0.1:{platform_port}/billing/stripe/webhook",
            "--webhook-secret", settings.STRIPE_WEBHOOK_SECRETS[0],
        ]
        return self._start_child("stripe-emulator", command, ready_line=None, timeout=30, port=port)

    def _start_child(self, name: str, command: list[str], *, ready_line: str | None, timeout: float,
                     port: int | None = None) -> subprocess.Popen:
        """Start a helper process, forward its output, wait until it prints ``ready_line`` (or answers on ``port``)."""
        proc = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()

        def pump() -> None:  # forward the child's output, note when it is ready
            for line in proc.stdout:
                sys.stdout.write(f"[{name}] {line}")
                if ready_line is not None and ready_line in line:
                    ready.set()

        def answering() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if port is not None and answering():
                break
            if proc.poll() is not None:
                raise CommandError(f"{name} exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                proc.kill()
                raise CommandError(f"{name} did not start within {timeout:.0f} s")
        return proc
