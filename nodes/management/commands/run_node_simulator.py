"""``manage.py run_node_simulator``: a fake inference node that behaves like a real one over HTTP."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nodes.nodeserver import attestation, thox
from nodes.nodeserver.app import DIALECTS, serve
from nodes.nodeserver.engines import ATTESTATION_MODES, FAIL_MODES, MODALITIES, SimConfig, SimulatorEngine


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


class Command(BaseCommand):
    help = "Run the node simulator: an OpenAI-compatible node with synthetic tokens, latency and failures."
    requires_system_checks: list[str] = []  # a node process never touches the database

    def add_arguments(self, parser: CommandParser) -> None:
        defaults = SimConfig()
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8092, help="0 picks a free port (printed when ready)")
        parser.add_argument("--models", default="sim-small", help="comma-separated model names")
        parser.add_argument("--ttft-ms", type=float, default=defaults.ttft_ms)
        parser.add_argument("--tokens-per-s", type=float, default=defaults.tokens_per_s, help="0 = unpaced")
        parser.add_argument("--completion-tokens", type=int, default=defaults.completion_tokens)
        parser.add_argument("--fail-rate", type=float, default=defaults.fail_rate)
        parser.add_argument("--fail-mode", choices=FAIL_MODES, default=defaults.fail_mode)
        parser.add_argument("--fail-after-tokens", type=int, default=defaults.fail_after_tokens)
        parser.add_argument("--seed", type=int, default=0, help="seed of the failure-injection draws")
        parser.add_argument(
            "--modalities",
            default=",".join(defaults.modalities),
            help=f"comma-separated input the models accept, from {','.join(MODALITIES)} (must include text)",
        )

        parser.add_argument(
            "--dialect",
            choices=DIALECTS,
            default="openai",
            help="ollama also serves Ollama's native /api (tags, ps, pull, load/unload via generate); "
            "anthropic serves Anthropic's Messages API (/v1/messages) instead of the OpenAI routes; "
            "thox also serves a MagStack-style cluster API on --cluster-port",
        )
        parser.add_argument(
            "--api-key", default="",
            help="require the key on /v1, like a hosted API: 'Authorization: Bearer <key>' (x-api-key with --dialect anthropic)",
        )
        thox_options = parser.add_argument_group("thox dialect")
        thox_options.add_argument("--cluster-port", type=int, default=thox.DEFAULT_CLUSTER_PORT, help="0 picks a free port")
        thox_options.add_argument("--members", type=int, default=3, help="simulated cluster members")
        thox_options.add_argument("--member-gpus", default="1", help="GPUs per member; a comma-separated list is cycled")
        thox_options.add_argument(
            "--member-hardware", default=thox.DEFAULT_HARDWARE, help="each member's hardware; a comma-separated list is cycled"
        )
        attestation.add_arguments(parser)
        parser.add_argument(
            "--attestation-mode",
            choices=ATTESTATION_MODES,
            default=defaults.attestation_mode,
            help="honest; forged (a chain from a root of its own); stale (replays an hour-old report, ignoring the nonce)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        models = [m.strip() for m in options["models"].split(",") if m.strip()]
        if not models:
            raise CommandError("--models needs at least one name")
        try:
            config = SimConfig(
                ttft_ms=options["ttft_ms"],
                tokens_per_s=options["tokens_per_s"],
                completion_tokens=options["completion_tokens"],
                fail_rate=options["fail_rate"],
                fail_mode=options["fail_mode"],
                fail_after_tokens=options["fail_after_tokens"],
                modalities=tuple(m.strip() for m in options["modalities"].split(",") if m.strip()),
                attestation_mode=options["attestation_mode"],
            )
            identity = attestation.identity_from_options(options, forge_only=options["attestation_mode"] == "forged")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        engine = SimulatorEngine(models, config, seed=options["seed"])
        cluster = None
        if options["dialect"] == "thox":
            try:
                cluster = thox.Cluster(
                    engine, members=options["members"], gpus=[int(g) for g in _csv(options["member_gpus"])],
                    hardware=_csv(options["member_hardware"]),
                )
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        serve(engine, options["host"], options["port"], banner="node simulator", dialect=options["dialect"],
              api_key=options["api_key"], cluster=cluster, cluster_port=options["cluster_port"], identity=identity)
