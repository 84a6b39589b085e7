"""A Python client of the flashsale gRPC API, generated from ../../proto: a library and a CLI.

Library:

    from flashsale_client import Client, FlashsaleError

    with Client("localhost:50051") as client:
        client.login("ann@example.com", "correct horse")       # keeps the token
        for snapshot in client.watch(sale_id):                  # ends after the ENDED snapshot
            print(snapshot.sold, snapshot.remaining)
        try:
            order = client.buy(sale_id, 2).order                # retried with the same key
        except FlashsaleError as error:
            print(error.reason)                                 # e.g. "USER_LIMIT_REACHED"

Command line (`--server`/FLASHSALE_SERVER, `--token`/FLASHSALE_TOKEN):

    python flashsale_client.py register ann@example.com Ann     # prints a token
    export FLASHSALE_TOKEN=$(python flashsale_client.py login ann@example.com)
    python flashsale_client.py watch SALE                       # one line per snapshot
    python flashsale_client.py buy SALE 2                       # prints the order
    python flashsale_client.py orders [SALE]

Sales with holds (a purchase is HELD until paid) and their waitlist:

    python flashsale_client.py pay ORDER [--reference REF]      # HELD -> CONFIRMED
    python flashsale_client.py cancel ORDER                     # HELD -> CANCELLED
    python flashsale_client.py join SALE 1                      # wait for units given back
    python flashsale_client.py leave SALE
    python flashsale_client.py follow SALE                      # my orders and place, live

Sales with a waiting room (Purchase and JoinWaitlist need an admission pass):

    python flashsale_client.py queue SALE                       # my place, live; then the pass
    python flashsale_client.py queue SALE --buy --quantity 2    # ... then buys with it
    python flashsale_client.py buy SALE 2 --pass PASS           # (join takes --pass too)

The shop's orders (an admin or fulfillment token):
    python flashsale_client.py follow-orders [--sale SALE] --cursor-file CURSOR
        # one line per order event; resumes after the sequence kept in CURSOR, and keeps it there

Errors are printed with their machine-readable reason (google.rpc.ErrorInfo, decoded from the
`grpc-status-details-bin` trailer) and exit with status 1.
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import generate

generate.ensure()

import grpc  # noqa: E402  (after the generated code is on sys.path)
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402

from flashsale.v1 import (  # noqa: E402
    admin_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
    feeds_pb2,
    feeds_pb2_grpc,
    orders_pb2,
    orders_pb2_grpc,
    purchase_pb2,
    purchase_pb2_grpc,
)

DEFAULT_SERVER = "localhost:50051"
# How a stream breaks when its connection does (a server restarting, a proxy dropping it): the
# follow-style calls (follow_orders, wait_for_admission) open it again after a pause.
STREAM_BROKEN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


@dataclass(eq=False)
class FlashsaleError(Exception):
    """A failed call: the gRPC status and the details the server attached to it."""

    code: grpc.StatusCode
    message: str
    # `google.rpc.ErrorInfo.reason`: a value name of `flashsale.v1.ErrorReason`, e.g.
    # "SOLD_OUT"; None when the status carried no ErrorInfo (e.g. the server was unreachable).
    reason: str | None = None
    # `ErrorInfo.metadata`, e.g. {"limit": "3", "bought": "2"} for USER_LIMIT_REACHED.
    metadata: dict[str, str] = field(default_factory=dict)
    # `google.rpc.BadRequest` field violations, as (field, description).
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    # `google.rpc.RetryInfo.retry_delay` in seconds (RATE_LIMITED).
    retry_delay: float | None = None

    def __str__(self) -> str:
        text = f"{self.reason or self.code.name}: {self.message}"
        if self.reason:
            text += f" ({self.code.name})"
        extras = [f"{key}={value}" for key, value in sorted(self.metadata.items())]
        extras += [f"{name}: {why}" for name, why in self.field_violations]
        if self.retry_delay is not None:
            extras.append(f"retry after {self.retry_delay:g}s")
        return text + "".join(f"\n  {extra}" for extra in extras)

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> FlashsaleError:
        """Decodes the status details (ErrorInfo, BadRequest, RetryInfo) of a failed call."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = error.details() if hasattr(error, "details") else str(error)
        result = cls(code=code, message=message or "")
        try:
            status = rpc_status.from_call(error)
        except (ValueError, AttributeError):
            # A details trailer that contradicts the status: keep what the status says.
            status = None
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                result.reason = info.reason
                result.metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                result.field_violations = [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                result.retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
        return result


@dataclass(eq=False)
class QueueEnded(FlashsaleError):
    """`wait_for_admission` ended without an admission: the waiting room CLOSED (the sale ended:
    sold out, time up or by an admin; nobody will be admitted) or the admission EXPIRED before
    it was returned (entering again takes a new place at the back). The stream itself ended
    normally, so `reason` is None; `state` says which, `update` is the stream's last message."""

    update: purchase_pb2.QueueUpdate | None = None

    @property
    def state(self) -> str:
        """"CLOSED" or "EXPIRED"."""
        state = self.update.state if self.update is not None else purchase_pb2.QUEUE_STATE_UNSPECIFIED
        return purchase_pb2.QueueState.Name(state).removeprefix("QUEUE_STATE_")

    def __str__(self) -> str:
        return f"{self.state}: {self.message}"

    @classmethod
    def of(cls, update: purchase_pb2.QueueUpdate) -> QueueEnded:
        if update.state == purchase_pb2.QUEUE_STATE_CLOSED:
            message = "the sale ended (sold out, time up or by an admin): nobody will be admitted"
        else:
            message = "the admission expired: enter the waiting room again for a new place at the back"
        return cls(grpc.StatusCode.FAILED_PRECONDITION, message, update=update)


def new_idempotency_key() -> str:
    """A fresh key for one intended purchase; every retry of that purchase must reuse it."""
    return str(uuid.uuid4())


class Client:
    """The flashsale API over one channel. Calls raise `FlashsaleError`."""

    def __init__(
        self,
        target: str = DEFAULT_SERVER,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # Plaintext HTTP/2, as the server speaks it; put TLS in front with a proxy if needed.
        self.channel = grpc.insecure_channel(target)
        self.token = token
        self.timeout = timeout
        self._sleep = sleep
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.purchases = purchase_pb2_grpc.PurchaseServiceStub(self.channel)
        self.feeds = feeds_pb2_grpc.FeedsServiceStub(self.channel)
        self.shop_orders = orders_pb2_grpc.OrdersServiceStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def metadata(self) -> list[tuple[str, str]]:
        """The `authorization: Bearer` metadata of calls that need a token."""
        if not self.token:
            raise FlashsaleError(
                grpc.StatusCode.UNAUTHENTICATED,
                "no token: log in first (or pass --token / FLASHSALE_TOKEN)",
                reason="TOKEN_MISSING",
            )
        return [("authorization", f"Bearer {self.token}")]

    def register(self, email: str, display_name: str, password: str) -> auth_pb2.AuthResponse:
        """Creates a buyer account; the client keeps its token."""
        request = auth_pb2.RegisterRequest(email=email, display_name=display_name, password=password)
        response = self._call(self.auth.Register, request, auth=False)
        self.token = response.access_token
        return response

    def login(self, email: str, password: str) -> auth_pb2.AuthResponse:
        """Exchanges credentials for a token; the client keeps it."""
        request = auth_pb2.LoginRequest(email=email, password=password)
        response = self._call(self.auth.Login, request, auth=False)
        self.token = response.access_token
        return response

    def watch(self, sale_id: str) -> Iterator[feeds_pb2.SaleSnapshot]:
        """The sale's snapshots: the full state at once, then each change (coalesced by the
        server). Ends after the snapshot that shows the sale ENDED; closing the iterator early
        cancels the stream."""
        return self._stream(self.feeds.WatchSale, feeds_pb2.WatchSaleRequest(sale_id=sale_id), auth=False)

    def _stream(self, method, request, *, auth: bool = True) -> Iterator:
        """The messages of a server stream, opened at the first `next`; a failure raises
        `FlashsaleError`, and closing the iterator early cancels the stream."""
        stream = method(request, metadata=self.metadata()) if auth else method(request)
        try:
            yield from stream
        except grpc.RpcError as error:
            raise FlashsaleError.from_rpc_error(error) from error
        finally:
            stream.cancel()

    def buy(
        self,
        sale_id: str,
        quantity: int,
        idempotency_key: str | None = None,
        *,
        admission_pass: str | None = None,
        attempts: int = 5,
        backoff: float = 0.1,
    ) -> purchase_pb2.PurchaseResponse:
        """Buys `quantity` units, all or nothing, and returns the durable order.

        A sale with a waiting room also needs `admission_pass` (see `wait_for_admission`):
        without one it fails with ADMISSION_REQUIRED; ADMISSION_INVALID / ADMISSION_EXPIRED
        when it is not this buyer's for this sale, or is over.

        Every attempt carries the same idempotency key (a new one unless given), so retrying
        cannot buy twice: a retry of a purchase that did go through returns the same order with
        `replayed` set. Retried: UNAVAILABLE (a backend is down, or the response was lost),
        after `backoff` seconds doubling each time, and RATE_LIMITED, after the server's
        RetryInfo delay; up to `attempts` calls in all.
        """
        request = purchase_pb2.PurchaseRequest(
            sale_id=sale_id,
            quantity=quantity,
            idempotency_key=idempotency_key or new_idempotency_key(),
            admission_pass=admission_pass or "",
        )
        for attempt in range(1, attempts + 1):
            try:
                return self._call(self.purchases.Purchase, request)
            except FlashsaleError as error:
                if attempt == attempts:
                    raise
                if error.code == grpc.StatusCode.UNAVAILABLE:
                    self._sleep(backoff * 2 ** (attempt - 1))
                elif error.reason == "RATE_LIMITED":
                    self._sleep(error.retry_delay if error.retry_delay is not None else backoff)
                else:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def pay(self, order_id: str, payment_reference: str) -> purchase_pb2.ConfirmOrderResponse:
        """Confirms a HELD order before its `expires_at` (as its buyer, or with a payments
        token). The same reference again answers the order with `replayed`; after the deadline
        it fails with HOLD_EXPIRED."""
        request = purchase_pb2.ConfirmOrderRequest(order_id=order_id, payment_reference=payment_reference)
        return self._call(self.purchases.ConfirmOrder, request)

    def cancel(self, order_id: str) -> purchase_pb2.CancelOrderResponse:
        """Cancels a HELD order; its units go back (to the waitlist first)."""
        return self._call(self.purchases.CancelOrder, purchase_pb2.CancelOrderRequest(order_id=order_id))

    def join_waitlist(
        self, sale_id: str, quantity: int, *, admission_pass: str | None = None
    ) -> common_pb2.WaitlistPlace:
        """Waits in the sale's line for units given back; joining again keeps the place. A sale
        with a waiting room needs `admission_pass`, as `buy` does."""
        request = purchase_pb2.JoinWaitlistRequest(
            sale_id=sale_id, quantity=quantity, admission_pass=admission_pass or ""
        )
        return self._call(self.purchases.JoinWaitlist, request).place

    def leave_waitlist(self, sale_id: str) -> bool:
        """Leaves the sale's line; False when not in it."""
        return self._call(self.purchases.LeaveWaitlist, purchase_pb2.LeaveWaitlistRequest(sale_id=sale_id)).left

    def enter_queue(self, sale_id: str) -> Iterator[purchase_pb2.QueueUpdate]:
        """Enters the sale's waiting room and yields the caller's place: at once, then on each
        change. WAITING (`position`, `ahead`, `estimated_wait`; `prequeue` before the start),
        then ADMITTED (`admission_pass`, `admission_expires_at`), then EXPIRED; or CLOSED when
        the sale ended. Entering again (another stream) resumes the same place or admission.
        Errors: SALE_NOT_FOUND, QUEUE_NOT_OPEN (too early, or the sale has no waiting room).
        Closing the iterator early cancels the stream."""
        return self._stream(self.purchases.EnterQueue, purchase_pb2.EnterQueueRequest(sale_id=sale_id))

    def wait_for_admission(
        self,
        sale_id: str,
        on_update: Callable[[purchase_pb2.QueueUpdate], None] | None = None,
        *,
        retry_pause: float = 1.0,
    ) -> purchase_pb2.QueueUpdate:
        """Waits in the sale's waiting room until admitted and returns the ADMITTED update: its
        `admission_pass` is what `buy` and `join_waitlist` need, until `admission_expires_at`.

        `on_update` is called with every update (the place as it changes), the last one too.
        When the stream breaks (UNAVAILABLE: a server restarting; or a connection reset), or
        ends without a verdict (the server stopping), the room is entered again after
        `retry_pause` seconds: the place is kept (for the server's grace time, 30 s by
        default). Raises `QueueEnded` on CLOSED (the sale ended) or EXPIRED, and
        `FlashsaleError` for any other error (SALE_NOT_FOUND, QUEUE_NOT_OPEN...)."""
        while True:
            try:
                with closing(self.enter_queue(sale_id)) as updates:  # closing cancels the stream
                    for update in updates:
                        if on_update is not None:
                            on_update(update)
                        if update.state == purchase_pb2.QUEUE_STATE_ADMITTED:
                            return update
                        if update.state in (purchase_pb2.QUEUE_STATE_CLOSED, purchase_pb2.QUEUE_STATE_EXPIRED):
                            raise QueueEnded.of(update)
                # The stream ended without a verdict (the server is stopping): enter again.
            except FlashsaleError as error:
                if isinstance(error, QueueEnded) or error.code not in STREAM_BROKEN:
                    raise
            self._sleep(retry_pause)

    def watch_my_orders(self, sale_id: str) -> Iterator[purchase_pb2.MyOrdersUpdate]:
        """The caller's orders in the sale and place in its line: at once, then on each change.
        Ends after the update with `last` set (the sale ended, nothing of the caller's held)."""
        return self._stream(self.purchases.WatchMyOrders, purchase_pb2.WatchMyOrdersRequest(sale_id=sale_id))

    def orders(self, sale_id: str = "") -> list[common_pb2.Order]:
        """The caller's orders, oldest first; only those of `sale_id` when given (every page)."""
        return self._every_page(self.purchases.ListMyOrders, purchase_pb2.ListMyOrdersRequest, sale_id=sale_id)

    def sale_orders(self, sale_id: str, **filters) -> list[common_pb2.Order]:
        """Every order of a sale, oldest first (admin or fulfillment token); `filters` are
        ListSaleOrdersRequest fields, e.g. status=common_pb2.ORDER_STATUS_CONFIRMED."""
        return self._every_page(
            self.shop_orders.ListSaleOrders, orders_pb2.ListSaleOrdersRequest, sale_id=sale_id, **filters
        )

    def _every_page(self, method, request_type, **fields) -> list:
        items, token = [], ""
        while True:
            page = self._call(method, request_type(page_size=1000, page_token=token, **fields))
            items.extend(page.orders)
            token = page.next_page_token
            if not token:
                return items

    def order_events(self, after_sequence: int = 0, sale_id: str = "") -> Iterator[orders_pb2.OrderEvent]:
        """The order events after `after_sequence`, of one sale when given (admin or fulfillment
        token). The stream stays open for new events; it raises when the connection breaks."""
        request = orders_pb2.WatchOrdersRequest(after_sequence=after_sequence, sale_id=sale_id)
        return self._stream(self.shop_orders.WatchOrders, request)

    def follow_orders(
        self, cursor_file: Path, sale_id: str = "", *, retry_pause: float = 1.0
    ) -> Iterator[orders_pb2.OrderEvent]:
        """Every order event after the sequence kept in `cursor_file` (0 when it does not exist),
        reconnecting from it when the stream breaks. The cursor is written (atomically) once the
        caller is done with an event, i.e. when it asks for the next one: a consumer stopped at
        any point resumes without a gap, and sees again at most the event it was handling.
        A cursor older than the server keeps raises CURSOR_EXPIRED."""
        cursor = read_cursor(cursor_file)
        while True:
            try:
                for event in self.order_events(cursor, sale_id):
                    yield event
                    cursor = event.sequence
                    write_cursor(cursor_file, cursor)
                return  # the server is stopping
            except FlashsaleError as error:
                if error.code not in STREAM_BROKEN:
                    raise
                self._sleep(retry_pause)

    def _call(self, method, request, *, auth: bool = True):
        metadata = self.metadata() if auth else None
        try:
            return method(request, metadata=metadata, timeout=self.timeout)
        except grpc.RpcError as error:
            raise FlashsaleError.from_rpc_error(error) from error


def read_cursor(path: Path) -> int:
    """The sequence kept in `path`; 0 when there is no file yet."""
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0


def write_cursor(path: Path, sequence: int) -> None:
    """Keeps `sequence` in `path`, replacing it atomically (never a half-written file)."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(f"{sequence}\n")
    os.replace(partial, path)


def format_event(event: orders_pb2.OrderEvent) -> str:
    """One line: sequence, kind, then the order."""
    kind = orders_pb2.OrderEventKind.Name(event.kind).removeprefix("ORDER_EVENT_KIND_")
    return f"#{event.sequence} {kind} {format_order(event.order)}"


# Currencies whose minor unit is not the hundredth (ISO 4217); the rest have two decimals.
_DECIMALS = {
    **dict.fromkeys(["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF",
                     "UGX", "VND", "VUV", "XAF", "XOF", "XPF"], 0),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}


def format_money(money: common_pb2.Money) -> str:
    """E.g. "19.99 USD" for 1999 minor units."""
    decimals = _DECIMALS.get(money.currency, 2)
    sign = "-" if money.amount_minor < 0 else ""
    whole, fraction = divmod(abs(money.amount_minor), 10**decimals)
    amount = f"{whole}.{fraction:0{decimals}d}" if decimals else str(whole)
    return f"{sign}{amount} {money.currency}"


def format_snapshot(snapshot: feeds_pb2.SaleSnapshot) -> str:
    """One line: version, status, sold / allocated, remaining."""
    status = common_pb2.SaleStatus.Name(snapshot.status).removeprefix("SALE_STATUS_")
    if snapshot.status == common_pb2.SALE_STATUS_ENDED:
        status += f" ({common_pb2.EndReason.Name(snapshot.end_reason).removeprefix('END_REASON_')})"
    line = (
        f"v{snapshot.version} {status} sold {snapshot.sold}/{snapshot.allocated} "
        f"remaining {snapshot.remaining}"
    )
    if snapshot.HasField("queue"):
        line += f" (waiting room: {snapshot.queue_waiting} waiting, {snapshot.queue_admitted} admitted)"
    return line


def format_order(order: common_pb2.Order, now: datetime | None = None) -> str:
    """One line: id, status, quantity, unit price, total, key; a held order's time left."""
    status = common_pb2.OrderStatus.Name(order.status).removeprefix("ORDER_STATUS_")
    if order.status == common_pb2.ORDER_STATUS_HELD and order.HasField("expires_at"):
        left = order.expires_at.ToDatetime(tzinfo=timezone.utc) - (now or datetime.now(timezone.utc))
        status += f", pay within {max(0, int(left.total_seconds()))} s"
    elif order.payment_reference:
        status += f", paid {order.payment_reference}"
    return (
        f"order {order.id} [{status}]: {order.quantity} x {format_money(order.unit_price)} = "
        f"{format_money(order.total)} (sale {order.sale_id}, key {order.idempotency_key})"
    )


def format_place(place: common_pb2.WaitlistPlace) -> str:
    """E.g. "in line: 3 of 7, for 1 unit"."""
    units = "unit" if place.quantity == 1 else "units"
    return f"in line: {place.position} of {place.length}, for {place.quantity} {units}"


def format_seconds(seconds: float) -> str:
    """E.g. "under 1 s", "42 s", "3 min"."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 120:
        return f"{math.ceil(seconds)} s"
    return f"{round(seconds / 60)} min"


def format_queue_update(update: purchase_pb2.QueueUpdate) -> str:
    """One line: where the caller stands in a waiting room, then the room's counts."""
    counts = f"; {update.waiting} waiting, {update.admitted} admitted"
    now = update.server_time.ToDatetime(tzinfo=timezone.utc)
    if update.state == purchase_pb2.QUEUE_STATE_WAITING and update.prequeue:
        left = (update.starts_at.ToDatetime(tzinfo=timezone.utc) - now).total_seconds()
        return (f"pre-queue: the order is drawn at random at the start, in {format_seconds(max(0.0, left))} "
                f"(entering earlier gives no edge){counts}")
    if update.state == purchase_pb2.QUEUE_STATE_WAITING:
        line = f"waiting: position {update.position} ({update.ahead} ahead)"
        if update.HasField("estimated_wait"):
            line += f", estimated wait {format_seconds(update.estimated_wait.ToTimedelta().total_seconds())}"
        return line + counts
    if update.state == purchase_pb2.QUEUE_STATE_ADMITTED:
        expires = update.admission_expires_at.ToDatetime(tzinfo=timezone.utc)
        left = max(0, int((expires - now).total_seconds()))
        return f"admitted until {expires:%Y-%m-%dT%H:%M:%SZ} ({left} s left){counts}"
    if update.state == purchase_pb2.QUEUE_STATE_EXPIRED:
        return "expired: the admission is over; entering again takes a new place at the back"
    if update.state == purchase_pb2.QUEUE_STATE_CLOSED:
        return "closed: the sale ended; nobody will be admitted"
    return purchase_pb2.QueueState.Name(update.state)


def _print_bought(response: purchase_pb2.PurchaseResponse) -> None:
    replayed = " (replayed: bought before with this key; nothing changed)"
    print(format_order(response.order) + (replayed if response.replayed else ""))


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return args.password
    if os.environ.get("FLASHSALE_PASSWORD"):
        return os.environ["FLASHSALE_PASSWORD"]
    return getpass.getpass("password: ")


def _print_login(response: auth_pb2.AuthResponse) -> None:
    user = response.user
    expires = response.expires_at.ToDatetime().isoformat(timespec="seconds")
    print(f"token for {user.display_name} <{user.email}> until {expires}Z", file=sys.stderr)
    print(response.access_token)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flashsale_client.py", description="A buyer's client of the flashsale gRPC API."
    )
    parser.add_argument("--server", default=os.environ.get("FLASHSALE_SERVER", DEFAULT_SERVER),
                        help="host:port of the gRPC API (env FLASHSALE_SERVER; default %(default)s)")
    parser.add_argument("--token", default=os.environ.get("FLASHSALE_TOKEN"),
                        help="token for buy, orders, queue... (env FLASHSALE_TOKEN), as printed by login")
    commands = parser.add_subparsers(dest="command", required=True)

    register = commands.add_parser("register", help="create a buyer account; prints its token")
    register.add_argument("email")
    register.add_argument("display_name")
    register.add_argument("--password", help="else FLASHSALE_PASSWORD, else asked")

    login = commands.add_parser("login", help="log in; prints the token")
    login.add_argument("email")
    login.add_argument("--password", help="else FLASHSALE_PASSWORD, else asked")

    watch = commands.add_parser("watch", help="print the sale's snapshots until it ended")
    watch.add_argument("sale_id")

    buy = commands.add_parser("buy", help="buy units; prints the order")
    buy.add_argument("sale_id")
    buy.add_argument("quantity", type=int)
    buy.add_argument("--key", help="idempotency key (default: a new one); reuse it to retry")
    buy.add_argument("--pass", dest="admission_pass",
                     help="admission pass (as printed by queue), for a sale with a waiting room")

    orders = commands.add_parser("orders", help="list my orders")
    orders.add_argument("sale_id", nargs="?", default="")

    pay = commands.add_parser("pay", help="confirm a held order (payment); prints the order")
    pay.add_argument("order_id")
    pay.add_argument("--reference", default="test-payment",
                     help="the payment's reference (default %(default)s); the same one retries safely")

    cancel = commands.add_parser("cancel", help="cancel a held order; prints the order")
    cancel.add_argument("order_id")

    join = commands.add_parser("join", help="wait in the sale's line for units given back")
    join.add_argument("sale_id")
    join.add_argument("quantity", type=int)
    join.add_argument("--pass", dest="admission_pass",
                      help="admission pass (as printed by queue), for a sale with a waiting room")

    leave = commands.add_parser("leave", help="leave the sale's line")
    leave.add_argument("sale_id")

    queue = commands.add_parser(
        "queue", help="wait in a sale's waiting room, printing my place; then the admission pass")
    queue.add_argument("sale_id")
    queue.add_argument("--buy", action="store_true", help="once admitted, buy with the pass; prints the order")
    queue.add_argument("--quantity", type=int, help="units to buy with --buy (default 1)")
    queue.add_argument("--key", help="idempotency key of the --buy purchase (default: a new one)")

    follow = commands.add_parser("follow", help="print my orders and place in a sale as they change")
    follow.add_argument("sale_id")

    follow_orders = commands.add_parser(
        "follow-orders", help="print the shop's order events (admin or fulfillment token), resuming from a cursor file")
    follow_orders.add_argument("--sale", default="", help="only this sale's events")
    follow_orders.add_argument("--cursor-file", type=Path, required=True,
                               help="keeps the last sequence handled; the next run starts after it")
    follow_orders.add_argument("--max-events", type=int, default=0, help="stop after this many (0: never)")

    args = parser.parse_args(argv)
    if args.command == "queue" and not args.buy and (args.quantity is not None or args.key):
        parser.error("queue: --quantity and --key go with --buy")
    with Client(args.server, args.token) as client:
        try:
            if args.command == "register":
                _print_login(client.register(args.email, args.display_name, _password(args)))
            elif args.command == "login":
                _print_login(client.login(args.email, _password(args)))
            elif args.command == "watch":
                for snapshot in client.watch(args.sale_id):
                    print(format_snapshot(snapshot), flush=True)
            elif args.command == "buy":
                _print_bought(client.buy(args.sale_id, args.quantity, args.key,
                                         admission_pass=args.admission_pass))
            elif args.command == "orders":
                for order in client.orders(args.sale_id):
                    print(format_order(order))
            elif args.command == "pay":
                response = client.pay(args.order_id, args.reference)
                print(format_order(response.order) + (" (replayed)" if response.replayed else ""))
            elif args.command == "cancel":
                response = client.cancel(args.order_id)
                print(format_order(response.order) + (" (replayed)" if response.replayed else ""))
            elif args.command == "join":
                place = client.join_waitlist(args.sale_id, args.quantity, admission_pass=args.admission_pass)
                print(format_place(place))
            elif args.command == "leave":
                print("left the line" if client.leave_waitlist(args.sale_id) else "was not in line")
            elif args.command == "queue":
                # The key is made once: every retry of the purchase (in buy) reuses it.
                key = args.key or new_idempotency_key()
                admitted = client.wait_for_admission(
                    args.sale_id, lambda update: print(format_queue_update(update), flush=True))
                print(admitted.admission_pass, flush=True)  # alone on its line: `| tail -n 1`
                if args.buy:
                    _print_bought(client.buy(args.sale_id, 1 if args.quantity is None else args.quantity, key,
                                             admission_pass=admitted.admission_pass))
            elif args.command == "follow":
                for update in client.watch_my_orders(args.sale_id):
                    now = update.server_time.ToDatetime(tzinfo=timezone.utc)
                    lines = [format_order(o, now) for o in update.orders]
                    if update.HasField("waitlist"):
                        lines.append(format_place(update.waitlist))
                    if update.last:
                        lines.append("the sale ended; nothing is held any more")
                    print("\n".join(lines or ["no orders, not in line"]), end="\n\n", flush=True)
            elif args.command == "follow-orders":
                printed = 0
                for event in client.follow_orders(args.cursor_file, args.sale):
                    print(format_event(event), flush=True)
                    printed += 1
                    if printed == args.max_events:
                        write_cursor(args.cursor_file, event.sequence)
                        break
        except FlashsaleError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
