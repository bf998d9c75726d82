"""The `pi` command: login, env export, keys, usage, models, nodes, chat (streamed; sealed with --tier)."""
from __future__ import annotations

import argparse
import getpass
import itertools
import json
import os
import shlex
import sys
import threading
from typing import Any, Self

from . import __version__
from ._client import Client
from ._errors import AuthenticationError, PermissionDeniedError, PIError, SecurityError
from ._types import Obj
from .config import config_path, load_config, save_config
from .crypto import ClientKeyPair


def _print_json(value: Any) -> None:
    print(json.dumps(value.to_dict() if isinstance(value, Obj) else value, indent=2, ensure_ascii=False))


def _table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def _money(micros: int | None, currency: str = "usd") -> str:
    if micros is None:
        return "-"
    return f"{micros / 1_000_000:,.6f} {currency.upper()}"


class Spinner:
    """A little progress on stderr while waiting (only when stderr is a terminal)."""

    def __init__(self, text: str):
        self.text = text
        self.enabled = sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        for frame in itertools.cycle("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"):
            if self._stop.wait(0.1):
                break
            sys.stderr.write(f"\r{frame} {self.text}")
            sys.stderr.flush()
        sys.stderr.write("\r" + " " * (len(self.text) + 2) + "\r")
        sys.stderr.flush()

    def stop(self) -> None:
        if self._thread and not self._stop.is_set():
            self._stop.set()
            self._thread.join()

    def __exit__(self, *exc) -> None:
        self.stop()


def _password(args: argparse.Namespace, *, confirm: bool = False) -> str | None:
    """The key file's password: $PI_KEY_PASSWORD, else asked on the terminal."""
    if os.environ.get("PI_KEY_PASSWORD") is not None:
        return os.environ["PI_KEY_PASSWORD"]
    if not sys.stdin.isatty():
        raise SecurityError("A password for the key file is needed: set PI_KEY_PASSWORD.", reason="bad_key_file")
    password = getpass.getpass("Key file password: ")
    if confirm and getpass.getpass("Again: ") != password:
        raise SecurityError("The passwords differ.", reason="bad_key_file")
    return password


def _client(args: argparse.Namespace) -> Client:
    config = load_config()
    trust = args.trust_root or config.get("trust_roots") or None
    keypair = None
    if getattr(args, "keypair", None):
        keypair = ClientKeyPair.load(args.keypair, _password(args))
    return Client(
        keypair=keypair,
        api_key=args.api_key or None,
        base_url=args.base_url or None,
        allow_http=args.allow_http or bool(config.get("allow_http")),
        max_retries=args.max_retries,
        trust_roots=trust,
    )


# --- commands ----------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    config = load_config()
    base_url = args.base_url or os.environ.get("PI_BASE_URL") or config.get("base_url") or "http://127.0.0.1:8000"
    key = args.api_key or os.environ.get("PI_API_KEY")
    if not key:
        if sys.stdin.isatty():
            key = getpass.getpass("API key (sk_live_…, from the console's keys page): ").strip()
        else:
            key = sys.stdin.readline().strip()
    if not key:
        print("error: no API key given", file=sys.stderr)
        return 2
    client = Client(api_key=key, base_url=base_url, allow_http=args.allow_http, max_retries=args.max_retries)
    with Spinner("checking the key…"):
        models = client.models.list()  # proves the key and the URL before anything is stored
    values = {**config, "base_url": client.base_url, "api_key": key}
    if args.allow_http:
        values["allow_http"] = True
    if args.trust_root:
        values["trust_roots"] = [os.path.abspath(p) for p in args.trust_root]
    path = save_config(values)
    if args.json:
        _print_json({"base_url": client.base_url, "config": str(path), "models": len(models.data)})
    else:
        print(f"Logged in to {client.base_url} ({len(models.data)} models available). Saved to {path} (mode 0600).")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    path = config_path()
    if path.exists():
        path.unlink()
    if args.json:
        _print_json({"logged_out": True, "config": str(path)})
    else:
        print(f"Removed {path}.")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    client = _client(args)
    values = {"OPENAI_BASE_URL": client.base_url + "/v1", "OPENAI_API_KEY": client.api_key}
    if args.json:
        _print_json(values)
    else:
        for name, value in values.items():
            print(f"export {name}={shlex.quote(value)}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.keys_command == "list":
        keys = client.keys.list()
        if args.json:
            _print_json(keys)
        else:
            _table([[k.id, k.kind, k.name or "", k.redacted, k.status, ",".join(k.scopes or []) or "all"] for k in keys.data],
                   ["ID", "KIND", "NAME", "KEY", "STATUS", "SCOPES"])
    elif args.keys_command == "create":
        key = client.keys.create(kind=args.kind, name=args.name, scopes=args.scope or None)
        if args.json:
            _print_json(key)
        else:
            print(f"Created {key.id} ({key.kind}, {key.name or 'unnamed'}). The key, shown only now:")
            print(key.key)
    elif args.keys_command == "revoke":
        key = client.keys.revoke(args.key_id)
        if args.json:
            _print_json(key)
        else:
            print(f"Revoked {key.id} ({key.status}).")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    balance = _client(args).balance.retrieve()
    if args.json:
        _print_json(balance)
    else:
        currency = balance.currency or "usd"
        _table([["balance", _money(balance.balance_micros, currency)],
                ["reserved", _money(balance.reserved_micros, currency)],
                ["available", _money(balance.available_micros, currency)]], ["", "AMOUNT"])
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    models = _client(args).models.list()
    if args.json:
        _print_json(models)
    else:
        _table([[m.id, str(m.context_window or ""), str(m.owned_by or "")] for m in models.data],
               ["MODEL", "CONTEXT", "OWNED BY"])
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    client = _client(args)
    if getattr(args, "verify", None):
        with Spinner("verifying the attestation…"):
            result = client.nodes.verify(args.verify)
        if args.json:
            _print_json(result)
        else:
            print(f"{result.node_id}: attestation verified here (root {result.root}, measurement {result.measurement}).")
        return 0
    nodes = client.nodes.list()
    if args.json:
        _print_json(nodes)
    else:
        _table([[n.id, n.region or "", n.attestation or "", ",".join(n.models or []), str(n.load if n.load is not None else "")]
                for n in nodes.data], ["NODE", "REGION", "ATTESTATION", "MODELS", "LOAD"])
    return 0


def cmd_keypair(args: argparse.Namespace) -> int:
    if args.keypair_command == "create":
        if os.path.exists(args.path) and not args.force:
            print(f"error: {args.path} exists (--force to replace it)", file=sys.stderr)
            return 1
        pair = ClientKeyPair.generate()
        path = pair.save(args.path, _password(args, confirm=True))
    else:
        pair = ClientKeyPair.load(args.path, _password(args))
        path = args.path
    if args.json:
        _print_json({"path": str(path), "public_key": pair.public_b64})
    else:
        print(f"{path}: X25519 public key {pair.public_b64}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    client = _client(args)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    interactive = sys.stdin.isatty() and not args.message
    prompts = iter(args.message) if args.message else None
    if interactive and not args.json:
        tier = f", sealed ({args.tier})" if args.tier else ""
        print(f"Chatting with {args.model}{tier}. Ctrl-D to end.", file=sys.stderr)
    while True:
        if prompts is not None:
            text = next(prompts, None)
        else:
            try:
                text = input("> ") if interactive else sys.stdin.readline()
            except EOFError:
                text = None
            if text == "" and not interactive:
                text = None
        if text is None:
            break
        text = text.rstrip("\n")
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        params: dict[str, Any] = {"model": args.model, "messages": messages, "stream": True}
        if args.max_tokens:
            params["max_tokens"] = args.max_tokens
        if args.tier:
            params["security_tier"] = args.tier
            params.setdefault("max_tokens", 256)
        spinner = Spinner("sealing and verifying the node…" if args.tier else "thinking…")
        spinner.__enter__()
        parts: list[str] = []
        try:
            stream = client.chat.completions.create(**params)
            for chunk in stream:
                for choice in chunk.choices or []:
                    delta = (choice.delta or {}).get("content")
                    if delta:
                        spinner.stop()
                        parts.append(delta)
                        if not args.json:
                            sys.stdout.write(delta)
                            sys.stdout.flush()
        finally:
            spinner.stop()
        reply = "".join(parts)
        messages.append({"role": "assistant", "content": reply})
        if args.json:
            out: dict[str, Any] = {"role": "assistant", "content": reply, "request_id": stream.request_id}
            if stream.sealed:
                out["sealed"] = stream.sealed.to_dict()
            print(json.dumps(out, ensure_ascii=False))
        else:
            sys.stdout.write("\n")
            if stream.sealed and args.verbose:
                receipt = stream.sealed.receipt or {}
                print(f"[sealed to {stream.sealed.node_id}; signed receipt: {receipt.get('input_tokens')} in, "
                      f"{receipt.get('output_tokens')} out]", file=sys.stderr)
        sys.stdout.flush()
    return 0


# --- the parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    def options(suppress: bool) -> argparse.ArgumentParser:
        # Given before or after the command alike: a subcommand's own defaults must not undo the top level's.
        d = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
        group = argparse.ArgumentParser(add_help=False)
        group.add_argument("--base-url", default=d(None), help="the platform's URL (default: $PI_BASE_URL, then the saved login)")
        group.add_argument("--api-key", default=d(None), help="an API key (default: $PI_API_KEY, $OPENAI_API_KEY, then the saved login)")
        group.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
        group.add_argument("--allow-http", action="store_true", default=d(False), help="allow plain http to a host other than localhost")
        group.add_argument("--max-retries", type=int, default=d(2))
        group.add_argument("--trust-root", action="append", metavar="PEM", default=d(None),
                           help="attestation trust root for sealed chats and node verification (repeatable; default $PI_TRUST_ROOTS)")
        return group

    common = options(True)
    parser = argparse.ArgumentParser(prog="pi", description="The private inference platform from the command line.",
                                     parents=[options(False)])
    parser.add_argument("--version", action="version", version=f"pi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("login", parents=[common], help="store a base URL and API key (mode 0600)").set_defaults(func=cmd_login)
    sub.add_parser("logout", parents=[common], help="forget the stored login").set_defaults(func=cmd_logout)

    env = sub.add_parser("env", parents=[common], help="print environment variables for other tools")
    env_sub = env.add_subparsers(dest="env_command", required=True)
    env_export = env_sub.add_parser("export", parents=[common], help="export lines for a tool's SDK")
    env_export.add_argument("flavour", choices=["openai"])
    env_export.set_defaults(func=cmd_env)

    keys = sub.add_parser("keys", parents=[common], help="the project's API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser("list", parents=[common]).set_defaults(func=cmd_keys)
    create = keys_sub.add_parser("create", parents=[common])
    create.add_argument("--name", default="")
    create.add_argument("--kind", choices=["secret", "publishable"], default="secret")
    create.add_argument("--scope", action="append", help="limit the key to a scope (repeatable)")
    create.set_defaults(func=cmd_keys)
    revoke = keys_sub.add_parser("revoke", parents=[common])
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys)

    sub.add_parser("usage", parents=[common], help="balance, reserved and available credit").set_defaults(func=cmd_usage)
    sub.add_parser("models", parents=[common], help="models the key can use").set_defaults(func=cmd_models)
    nodes = sub.add_parser("nodes", parents=[common], help="nodes that may serve the project")
    nodes.add_argument("--verify", metavar="NODE_ID", help="verify a node's attestation here, against the trust roots")
    nodes.set_defaults(func=cmd_nodes)

    keypair = sub.add_parser("keypair", parents=[common], help="the X25519 key pair sealed answers are encrypted to")
    keypair_sub = keypair.add_subparsers(dest="keypair_command", required=True)
    kp_create = keypair_sub.add_parser("create", parents=[common], help="a new key pair in a password-protected PEM file (0600)")
    kp_create.add_argument("path")
    kp_create.add_argument("--force", action="store_true")
    kp_create.set_defaults(func=cmd_keypair)
    kp_show = keypair_sub.add_parser("show", parents=[common], help="the public key of a key file")
    kp_show.add_argument("path")
    kp_show.set_defaults(func=cmd_keypair)

    chat = sub.add_parser("chat", parents=[common], help="chat, streaming (interactive, or lines on stdin)")
    chat.add_argument("--model", "-M", required=True)
    chat.add_argument("--tier", choices=["standard", "high", "maximum"], help="seal the chat end to end")
    chat.add_argument("--system")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--message", "-m", action="append", help="send this (repeatable) instead of reading stdin")
    chat.add_argument("--keypair", metavar="PEM", help="answer sealed chats to this key pair (password: $PI_KEY_PASSWORD or asked)")
    chat.add_argument("--verbose", "-v", action="store_true")
    chat.set_defaults(func=cmd_chat)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except PIError as exc:
        if getattr(args, "json", False):
            error = {"type": type(exc).__name__, "message": getattr(exc, "message", str(exc))}
            for name in ("code", "status_code", "request_id", "reason"):
                if getattr(exc, name, None) is not None:
                    error[name] = getattr(exc, name)
            print(json.dumps({"error": error}), file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, SecurityError):
            return 3
        return 2 if isinstance(exc, (AuthenticationError, PermissionDeniedError)) else 1


if __name__ == "__main__":
    sys.exit(main())
