"""Run one ASGI process (uvicorn, uvloop, httptools) with a graceful stop that drains streams.

    python -m config.server --host 127.0.0.1 --port 8001

On the first SIGTERM (or SIGINT):

1. readiness (/readyz) answers 503 ``draining`` at once, while the process keeps serving for
   SHUTDOWN_READY_DELAY_SECONDS, so nginx health checks, Kubernetes endpoints and other load
   balancers stop sending it new requests before it stops accepting them;
2. it stops accepting connections; responses in progress, open streams above all, go on to
   their end, for up to SHUTDOWN_DRAIN_SECONDS (then they are cut; their clients resume on
   another process with Last-Event-ID, the stream log is in Redis);
3. the lifespan shutdown waits for background work, the settlements first (gateway/lifecycle.py);
4. it exits.

A second signal skips the delay (step 2 at once); uvicorn's own rules apply after that.
"""
from __future__ import annotations

import argparse
import os
import time

import uvicorn

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

APP = "config.asgi:application"


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, ready_delay: float):
        super().__init__(config)
        self.ready_delay = ready_delay
        self._stop_at: float | None = None
        self._signal: int | None = None
        self._announced = False

    def handle_exit(self, sig, frame) -> None:
        from config import ops

        if ops.draining() or self.ready_delay <= 0:
            ops.start_draining()
            self._stop_at = None
            return super().handle_exit(sig, frame)
        # In a signal handler: only flags here; on_tick (the server's loop, every 0.1 s) does the rest.
        ops.start_draining()
        self._signal, self._stop_at = sig, time.monotonic() + self.ready_delay

    async def on_tick(self, counter: int) -> bool:
        from config import ops

        if ops.draining() and not self._announced:
            self._announced = True
            uvicorn.server.logger.info(
                "Draining: readiness is 503; accepting for %.0f s more, then open streams get up to %d s",
                self.ready_delay if self._stop_at else 0, self.config.timeout_graceful_shutdown,
            )
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self._stop_at = None
            super().handle_exit(self._signal, None)
        return await super().on_tick(counter)


def config_for(*, host: str, port: int, workers: int = 1, proxy_headers: bool = True) -> uvicorn.Config:
    from django.conf import settings

    return uvicorn.Config(
        APP, host=host, port=port, workers=workers, loop="uvloop", http="httptools", lifespan="on",
        access_log=False,  # config/ops.py writes the access log (ACCESS_LOG)
        proxy_headers=proxy_headers, forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        timeout_graceful_shutdown=settings.SHUTDOWN_DRAIN_SECONDS, log_level="info",
    )


def run(*, host: str, port: int, workers: int = 1) -> None:
    from django.conf import settings

    config = config_for(host=host, port=port, workers=workers)
    if workers > 1:  # uvicorn's supervisor forks the workers; each drains on its own SIGTERM
        uvicorn.run(APP, **{k: getattr(config, k) for k in ("host", "port", "workers", "loop", "http", "lifespan",
                                                             "access_log", "timeout_graceful_shutdown")})
        return
    DrainingServer(config, ready_delay=settings.SHUTDOWN_READY_DELAY_SECONDS).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)
    run(host=args.host, port=args.port)


if __name__ == "__main__":
    main()
