"""The life of one metered request: reserve before the node runs, then settle
(or void) with the request record and idempotency outcome in one round trip."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence

from django.conf import settings
from django.utils import timezone

from billing import ledger
from billing.pricing import Price, Usage, reservation_micros
from config import asyncdb, bus, metrics
from config.asyncdb import Stmt

from . import auth, background, idempotency, limits
from .auth import KeyRecord
from .errors import GatewayError, status_code_for
from .records import RequestMeta, insert_statement

log = logging.getLogger(__name__)
SETTLE_RETRY_SECONDS = 300


class PaidRequest:
    def __init__(
        self,
        *,
        key: KeyRecord,
        request_id: str,
        endpoint: str,
        price: Price,
        stream: bool,
        claim: idempotency.Claim | None,
        session_id: str = "",
        admitted_tokens: int = 0,
        ask_less: str = "lower max_tokens",
    ):
        self.key = key
        self.ask_less = ask_less  # how the refusal messages say to need less
        self.price = price
        self.claim = claim
        self.admitted_tokens = admitted_tokens
        self.started = time.monotonic()
        self.meta = RequestMeta(
            request_id=request_id,
            organization_id=key.organization_id,
            project_id=key.project_id,
            api_key_id=key.key_id,
            endpoint=endpoint,
            created_at=timezone.now(),
            model=price.model,
            stream=stream,
            session_id=session_id,
            price_version=price.version,
            bodies_kept=key.store_bodies != "never",
        )
        self.request_body: bytes | None = None  # kept (encrypted) after settlement if the project keeps bodies
        self.key_generation = auth.cache.generation
        self.reservation: ledger.Reservation | None = None
        self.settlement: ledger.Settlement | None = None
        self.finished = False
        self.counted_open = False  # in metrics.RESERVATIONS_OPEN until finished

    @property
    def request_id(self) -> str:
        return self.meta.request_id

    async def reserve(
        self, *, max_input_tokens: int = 0, max_output_tokens: int = 0, amount: int | None = None,
        before: Sequence[Stmt] = (), held_here: bool = True,
    ) -> idempotency.StoredResponse | None:
        """Hold the worst-case cost (``amount`` when the caller prices it, e.g. per image),
        running ``before`` in the same round trip. Returns a stored response if this is a replay.
        ``held_here=False``: a job settles it elsewhere (a worker), so this process does not count it open."""
        if amount is None:
            amount = reservation_micros(self.price, max_input_tokens=max_input_tokens, max_output_tokens=max_output_tokens)
        cap = self.key.request_spend_cap
        if cap is not None and amount > cap:
            await self.fail("spend_cap_reached")
            raise GatewayError(
                "spend_cap_reached",
                f"This request would reserve up to {amount} micro-units ({self.key.currency.upper()}), above its "
                f"spend cap of {cap}. Shorten the conversation or {self.ask_less}.",
            )
        extra = list(before)
        for _ in range(2):  # a second pass only if an expired claim was just removed
            now = timezone.now()
            before = [idempotency.claim_statement(self.claim, request_id=self.request_id, now=now)] if self.claim else []
            before += extra
            try:
                self.reservation = await ledger.reserve(
                    wallet_id=self.key.wallet_id,
                    usage_wallet_id=self.key.usage_wallet_id,
                    amount=amount,
                    price=self.price,
                    request_id=self.request_id,
                    project_id=self.key.project_id,
                    now=now,
                    timeout_at=now + dt.timedelta(seconds=settings.RESERVATION_TIMEOUT_SECONDS),
                    before=before,
                    api_key_id=self.key.key_id,
                    project_spend_cap=self.key.project_spend_cap,
                    key_spend_cap=self.key.key_spend_cap,
                )
                self.meta.transfer_id = self.reservation.transfer_id
                if held_here:
                    self.counted_open = True
                    metrics.RESERVATIONS_OPEN.inc()
                return None
            except asyncdb.ConstraintViolation as exc:
                if exc.name != idempotency.CONSTRAINT:
                    raise
                stored = await idempotency.resolve_conflict(self.claim, now=now)
                if stored is not None:
                    return stored
            except ledger.InsufficientBalance:
                await self.fail("insufficient_balance")
                raise GatewayError(
                    "insufficient_balance",
                    f"Insufficient balance: this request needs up to {amount} micro-units "
                    f"({self.key.currency.upper()}) reserved. Top up the wallet or {self.ask_less}.",
                ) from None
            except ledger.SpendCapReached as exc:
                await self.fail("spend_cap_reached")
                owner = "API key" if exc.scope == "key" else "project"
                raise GatewayError(
                    "spend_cap_reached",
                    f"This request would cross the {owner}'s monthly spend cap of {exc.cap} micro-units "
                    f"({self.key.currency.upper()}): it needs up to {amount} reserved and {exc.room} is left "
                    f"this month. Raise the cap or {self.ask_less}.",
                ) from None
            except ledger.WalletUnavailable:
                await self.fail("wallet_suspended")
                raise GatewayError(
                    "wallet_suspended",
                    "The organization's wallet is suspended (for example while a payment is disputed): "
                    "nothing was charged. An owner or finance member can see why on the console's billing page.",
                ) from None
            except asyncdb.DatabaseUnavailable:
                raise GatewayError("service_unavailable", "Billing is unreachable; nothing was charged.") from None
        raise GatewayError("idempotency_in_progress", "This Idempotency-Key is being released; retry.")

    async def fail(self, code: str) -> None:
        """Record a request refused before anything was reserved (its admitted tokens go back)."""
        self._refund_tokens(None)
        self.meta.status_code = status_code_for(code)
        self.meta.error_code = code
        self.meta.bodies_kept = False
        self.meta.latency_ms = self._elapsed_ms()
        background.spawn(asyncdb.run(insert_statement(self.meta)), name=f"record:{self.request_id}")

    def _elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    async def finish(
        self,
        *,
        usage: Usage | None,
        status_code: int,
        error_code: str = "",
        node_id: str = "",
        ttft_ms: int | None = None,
        stored: idempotency.StoredResponse | None = None,
        after: Sequence[Stmt] = (),
        response_body: bytes | Callable[[], bytes] | None = None,
    ) -> ledger.Settlement | None:
        """Settle ``usage`` (or void if None), record, and store the idempotent response; then,
        in the background, the bodies if the project keeps them (``response_body``: what the
        client got, or a function returning it)."""
        assert self.reservation is not None and not self.finished
        self.finished = True
        if self.counted_open:
            metrics.RESERVATIONS_OPEN.dec()
        meta = self.meta
        meta.status_code, meta.error_code, meta.node_id, meta.ttft_ms = status_code, error_code, node_id, ttft_ms
        meta.latency_ms = self._elapsed_ms()
        now = timezone.now()
        after = list(after)
        # Bodies are kept for the requests that ran (keep_bodies, after this); never for a void.
        # (and only when the caller handed them over: a sealed request's never are)
        meta.bodies_kept = meta.bodies_kept and usage is not None and self.request_body is not None
        if usage is not None:
            amount, _ = ledger.settlement_amount(self.reservation, usage)
            meta.input_tokens, meta.cached_input_tokens = usage.input_tokens, usage.cached_input_tokens
            meta.output_tokens, meta.cost = usage.output_tokens, amount
            metrics.tokens_settled(meta.model, usage.input_tokens, usage.output_tokens)
        after.append(insert_statement(meta))
        if self.claim is not None:
            if stored is not None:
                after.append(idempotency.complete_statement(self.claim, request_id=self.request_id, stored=stored))
            else:
                after.append(idempotency.release_statement(self.claim, request_id=self.request_id))

        counters = self._may_have_counters()

        async def attempt() -> ledger.Settlement | None:
            if usage is None:
                await ledger.void(reservation=self.reservation, now=now, after=after, counters=counters)
                return None
            return await ledger.settle(reservation=self.reservation, usage=usage, now=now, after=after, counters=counters)

        try:
            self.settlement = await attempt()
        except asyncdb.DatabaseUnavailable:
            # Settlement is idempotent (claim-guarded), so keep trying in the
            # background; if all fails the sweeper voids it: never a double charge.
            log.error("settlement of %s deferred: database unavailable", self.request_id)
            background.spawn(self._retry(attempt), name=f"settle:{self.request_id}")
        self._refund_tokens(usage)
        self.keep_bodies(response_body)
        if self.settlement is not None and self.settlement.capped:
            log.warning("request %s: node usage exceeded the reservation; billed the reservation", self.request_id)
        return self.settlement

    def keep_bodies(self, response: bytes | Callable[[], bytes] | None) -> None:
        """Encrypt and store the bodies in the background, if the project keeps them (gateway.vault)."""
        if not self.meta.bodies_kept or self.request_body is None:
            return
        from . import vault

        if callable(response):
            response = response()
        background.spawn(
            vault.store_request_bodies(key=self.key, request_id=self.request_id, request=self.request_body, response=response),
            name=f"bodies:{self.request_id}",
        )

    def _may_have_counters(self) -> bool:
        """Whether a spend counter may track this request's project or key this month.

        Counters exist only where a cap is (or was) set, and setting one
        invalidates the cached key records everywhere. So when this key has no
        cap, no invalidation arrived since the request began, and invalidations
        are live, the settlement can leave the counter statements out (their
        planning costs PostgreSQL more than the rest of the settlement).
        """
        key = self.key
        return (
            key.project_spend_cap is not None
            or key.key_spend_cap is not None
            or auth.cache.generation != self.key_generation
            or not bus.subscribed()
        )

    async def _retry(self, attempt) -> None:
        deadline = time.monotonic() + SETTLE_RETRY_SECONDS
        delay = 0.5
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            try:
                self.settlement = await attempt()
                return
            except asyncdb.DatabaseUnavailable:
                delay = min(delay * 2, 15.0)
        log.error("settlement of %s abandoned; the sweeper will void its reservation", self.request_id)

    def _refund_tokens(self, usage: Usage | None) -> None:
        used = (usage.input_tokens + usage.output_tokens) if usage else 0
        unused = self.admitted_tokens - used
        if unused > 0:
            background.spawn(
                limits.refund(key=self.key, tokens=unused),
                name=f"refund:{self.request_id}",
            )
