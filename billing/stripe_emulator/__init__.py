"""Stripe emulator for development and tests: localstripe plus an HTTP front for what it lacks.

Run it with ``python -m billing.stripe_emulator --port 12111`` (or ``make stripe-emulator``); tests
use the ``stripe_emulator`` fixture (tests/conftest.py). Both servers listen on 127.0.0.1 only:
localstripe's aiohttp app on an internal port (its own launcher binds every interface and pickles
its state to /tmp on every change; we build the app ourselves and keep state in memory), and the
front on the public port, which serves the routes below itself and proxies the rest of ``/v1`` to
localstripe. One process, one event loop.

What localstripe 1.15.10 does with stripe-python 16 (API 2026-10-28), found by driving it:
- customers: create/retrieve/update/list (metadata, email, ``invoice_settings.default_payment_method``).
- payment methods: the test ids ``pm_card_visa``, ``pm_card_visa_chargeDeclined`` (attach fails),
  ``pm_card_chargeCustomerFail`` (charge fails: CardError) become real ``pm_…`` objects on use;
  attach/detach/list by customer.
- payment intents: create, ``confirm=true`` + ``off_session=true``, confirm, cancel, capture; failures
  raise CardError. No ``automatic_payment_methods``, no ``customer`` filter on list (the front adds
  it), ``latest_charge`` comes back expanded and a removed ``charges`` list is present (the front
  returns the id unless expanded, and drops ``charges``).
- charges and refunds: a charge per payment; refunds by charge or payment intent, but NO check of
  the refundable amount and no ``charge.refunded`` event (the front checks and announces).
- balance transactions: one per charge and refund, but ``fee`` is always 0 and the list takes no
  filters (the front adds 2.9% + 30c on charges, ``type``/``source``/``payout``/``created``
  filters and ``expand[]=data.source``). ``GET /v1/balance`` is a hard-coded 20.00 EUR (the front
  computes it).
- products and plans: yes. Prices: NO (404). Subscriptions: one item only, by ``plan`` (not
  ``price``); they invoice and pay at once; ``invoice.payment_succeeded`` but no ``invoice.paid``.
- disputes: NO (404). Payouts: EUR only, with a made-up balance transaction. Checkout sessions,
  billing portal, billing meters and meter events: NO. Setup intents: no ``confirm`` with a pm.
- webhooks: ``POST /_config/webhooks/<id>``, signed ``t=…,v1=…`` but with the 2017-08-15 API
  version, after a fixed 1 s delay, with no record of what was sent.

What the front serves itself (``api``, ``pages``, ``admin``):
- ``/v1/prices`` create/retrieve/update/list: one-time and recurring, licensed and metered
  (``unit_amount`` or ``unit_amount_decimal``, ``recurring[meter]``), ``lookup_key`` unique
  (``transfer_lookup_key``), ``product`` or ``product_data``. A recurring price is also a
  localstripe Plan of the same id, so localstripe's subscriptions and invoices can use it.
- ``/v1/billing/meters`` and ``/v1/billing/meter_events``: a second event with an ``identifier``
  already seen is refused with 400 ``resource_already_exists`` and counts nothing (Stripe enforces
  identifier uniqueness over at least 24 h; a sender treats that error on its own identifier as
  acknowledged). Values must be integers; unknown customers are refused at once (Stripe reports
  them asynchronously).
- ``/v1/checkout/sessions`` create/retrieve/list/expire and ``…/line_items``, ``payment`` and
  ``subscription`` modes; the hosted page ``/pay/<id>`` (see ``pages``).
- ``/v1/billing_portal/sessions`` and its page ``/portal/<id>`` (cancel at period end).
- ``/v1/subscriptions`` create/update with ``items[][price]``: one licensed price in localstripe
  plus any metered prices kept by the front and shown in ``items``.
- ``/v1/refunds`` (checked, announced), ``/v1/disputes``, ``/v1/payouts``,
  ``/v1/balance_transactions``, ``/v1/balance``, ``/v1/invoices`` (localstripe's plus renewals),
  ``/v1/payment_intents`` list, ``/v1/events`` (every event the emulator sent).
- Idempotency-Key on every POST, as Stripe: same key and body replays the first answer, another
  body is an ``idempotency_error``.
- Webhooks (``hub``): full Event objects (``evt_…``, ``object: "event"``, the library's
  ``api_version``, ``livemode: false``) signed with ``stripe.WebhookSignature`` (one ``v1`` per
  secret of the endpoint, as during a rotation), delivered in order, recorded, droppable, replayable.

The test/admin API (``admin``), no key needed: ``POST /_emulator/webhook_endpoints``
``{url, secrets, enabled_events}``; ``POST /_emulator/drop`` ``{count, type}``;
``GET /_emulator/deliveries?type=&event_id=&status=&wait_for=N&timeout=S``;
``POST /_emulator/events/<id>/replay``; ``POST /_emulator/events`` ``{type, object}``;
``POST /_emulator/checkout/sessions/<id>/async_payment`` ``{result}``;
``POST /_emulator/subscriptions/<id>/renew`` ``{fail}``; ``POST /_emulator/disputes``
``{charge|payment_intent, amount}`` and ``…/<id>/close`` ``{outcome: won|lost}``;
``POST /_emulator/payouts`` ``{currency}``; ``GET /_emulator/meter_events?customer=``;
``POST /_emulator/reset`` ``{objects}``. Triggers answer after their webhooks were delivered.

Fees: 2.9% + 30c per charge (rounded half up to the cent), none on refunds, 15.00 per dispute
(not returned when won). The emulator's own choices where Stripe's exact behaviour is not
documented are said where they are made.

localstripe is GPL-3.0: it is a development dependency (the ``dev`` extra), run as a separate
tool; the application never imports it.
"""
