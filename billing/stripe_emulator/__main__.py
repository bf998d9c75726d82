"""``python -m billing.stripe_emulator --port 12111``: the Stripe emulator on 127.0.0.1."""
from __future__ import annotations

import argparse

from billing.stripe_emulator.app import run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m billing.stripe_emulator", description=__doc__)
    parser.add_argument("--port", type=int, default=12111, help="port on 127.0.0.1 (default 12111)")
    parser.add_argument("--public-url", default=None,
                        help="base URL of the hosted pages in session urls (default http://127.0.0.1:PORT)")
    parser.add_argument("--api-key", default=None,
                        help="accept only this secret key (default: any sk_… key, like localstripe)")
    parser.add_argument("--webhook-url", default=None, help="deliver every event, signed, to this URL")
    parser.add_argument("--webhook-secret", action="append", default=[],
                        help="signing secret for --webhook-url (repeat during a rotation: one v1 each)")
    args = parser.parse_args()
    if args.webhook_url and not args.webhook_secret:
        parser.error("--webhook-url needs --webhook-secret")
    run(port=args.port, public_url=args.public_url, api_key=args.api_key, webhook_url=args.webhook_url,
        webhook_secrets=args.webhook_secret)


if __name__ == "__main__":
    main()
