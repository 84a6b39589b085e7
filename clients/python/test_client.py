"""The Python client against the real flashsale binary: register, log in, watch, buy, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest

import generate
from flashsale_client import (
    Client,
    FlashsaleError,
    QueueEnded,
    format_order,
    format_place,
    format_queue_update,
    format_snapshot,
)
from flashsale_server import running_server
from flashsale.v1 import admin_pb2, common_pb2, purchase_pb2

HERE = Path(__file__).resolve().parent
PASSWORD = "correct horse battery"
WAIT_SECS = 15


def new_sale(server, *, allocated=10, per_user_limit=3, max_per_purchase=2, price=1999, hold_seconds=0,
             queue=None):
    """An ACTIVE sale of a new product, made with an admin token; returns its id. `queue`: the
    fields of a waiting room (common_pb2.QueueOptions), e.g. {"admit_per_second": 20}."""
    with Client(server.addr, server.token("admin")) as admin:
        product = admin.admin.CreateProduct(
            admin_pb2.CreateProductRequest(name="Sneaker", initial_inventory=allocated + 5),
            metadata=admin.metadata(), timeout=10,
        )
        request = admin_pb2.CreateSaleRequest(
            product_id=product.id,
            allocated=allocated,
            unit_price=common_pb2.Money(amount_minor=price, currency="USD"),
            per_user_limit=per_user_limit,
            max_per_purchase=max_per_purchase,
            hold_seconds=hold_seconds,
            queue=common_pb2.QueueOptions(**queue) if queue is not None else None,
        )
        request.end_time.FromDatetime(datetime.now(timezone.utc) + timedelta(hours=1))
        sale = admin.admin.CreateSale(request, metadata=admin.metadata(), timeout=10)
    assert sale.status == common_pb2.SALE_STATUS_ACTIVE
    return sale.id


def admin_call(server, method: str, **fields):
    """One AdminService call with an admin token, e.g. admin_call(s, "EndSale", sale_id=...)."""
    with Client(server.addr, server.token("admin")) as admin:
        request = getattr(admin_pb2, f"{method}Request")(**fields)
        return getattr(admin.admin, method)(request, metadata=admin.metadata(), timeout=10)


def new_email(name: str) -> str:
    return f"{name}.{uuid.uuid4().hex[:12]}@example.com"


def wait_for(condition, what: str):
    """Polls `condition` until it holds, failing after WAIT_SECS."""
    deadline = time.monotonic() + WAIT_SECS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


class Watcher(threading.Thread):
    """Watches a sale through the client in a thread, keeping every snapshot it receives."""

    def __init__(self, addr: str, sale_id: str):
        super().__init__(daemon=True)
        self.client = Client(addr)
        self.sale_id = sale_id
        self.snapshots = []
        self.error: BaseException | None = None

    def run(self):
        try:
            for snapshot in self.client.watch(self.sale_id):
                self.snapshots.append(snapshot)
        except BaseException as error:  # reported by the test, not lost in the thread
            self.error = error
        finally:
            self.client.close()


def test_a_buyer_registers_logs_in_watches_and_buys(server):
    sale_id = new_sale(server, allocated=10, per_user_limit=3, max_per_purchase=2)
    email = new_email("ann")

    with Client(server.addr) as newcomer:
        registered = newcomer.register(email, "Ann", PASSWORD)
    assert registered.access_token and registered.user.display_name == "Ann"

    watcher = Watcher(server.addr, sale_id)
    watcher.start()
    try:
        wait_for(lambda: watcher.snapshots or watcher.error, "the first snapshot")
        assert watcher.error is None, watcher.error
        first = watcher.snapshots[0]
        assert (first.status, first.sold, first.remaining) == (common_pb2.SALE_STATUS_ACTIVE, 0, 10)

        with Client(server.addr) as buyer:
            login = buyer.login(email.upper(), PASSWORD)
            assert login.user.id == registered.user.id
            assert buyer.token == login.access_token

            bought = buyer.buy(sale_id, 2, "ann-1")
            order = bought.order
            assert not bought.replayed
            assert (order.sale_id, order.buyer_id, order.quantity) == (sale_id, registered.user.id, 2)
            assert (order.total.amount_minor, order.total.currency) == (3998, "USD")
            assert order.idempotency_key == "ann-1"

            # The watcher sees the purchase without asking again.
            wait_for(lambda: any(s.sold == 2 for s in watcher.snapshots), "a snapshot with sold 2")
            seen = [s.sold for s in watcher.snapshots]
            assert seen[0] == 0 and seen == sorted(seen), seen
            latest = watcher.snapshots[-1]
            assert (latest.sold, latest.remaining) == (2, 8)

            # A retry with the same key returns the same order and buys nothing more.
            again = buyer.buy(sale_id, 2, "ann-1")
            assert again.replayed and again.order.id == order.id

            # Two more would exceed the limit of 3: the reason is decoded from the status details.
            with pytest.raises(FlashsaleError) as refused:
                buyer.buy(sale_id, 2)
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.reason == "USER_LIMIT_REACHED"
            assert refused.value.metadata == {"limit": "3", "bought": "2"}

            assert [o.id for o in buyer.orders(sale_id)] == [order.id]

        # The stream ends by itself after the ENDED snapshot.
        admin_call(server, "EndSale", sale_id=sale_id)
        watcher.join(WAIT_SECS)
        assert not watcher.is_alive(), "the watch did not end after the sale ended"
        assert watcher.error is None, watcher.error
        last = watcher.snapshots[-1]
        assert (last.status, last.end_reason, last.sold) == (
            common_pb2.SALE_STATUS_ENDED, common_pb2.END_REASON_BY_ADMIN, 2)
        assert format_snapshot(last).endswith("ENDED (BY_ADMIN) sold 2/10 remaining 8")
    finally:
        watcher.client.close()  # ends the stream if an assertion failed before the sale ended
        watcher.join(WAIT_SECS)


def test_errors_carry_their_reason(server):
    with Client(server.addr) as client:
        with pytest.raises(FlashsaleError) as invalid:
            client.register("not-an-email", "Ann", "short")
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert invalid.value.reason == "INVALID_FIELD"
        assert {name for name, _ in invalid.value.field_violations} == {"email", "password"}

        email = new_email("bea")
        client.register(email, "Bea", PASSWORD)
        with pytest.raises(FlashsaleError) as taken:
            client.register(email, "Bea", PASSWORD)
        assert taken.value.reason == "EMAIL_TAKEN"
        with pytest.raises(FlashsaleError) as wrong:
            client.login(email, "not the password")
        assert (wrong.value.code, wrong.value.reason) == (grpc.StatusCode.UNAUTHENTICATED,
                                                          "BAD_CREDENTIALS")

        # An error on a stream is decoded too.
        with pytest.raises(FlashsaleError) as missing:
            next(client.watch(str(uuid.uuid4())))
        assert missing.value.reason == "SALE_NOT_FOUND"

        client.token = None
        with pytest.raises(FlashsaleError) as anonymous:
            client.buy(new_sale(server), 1)
        assert anonymous.value.reason == "TOKEN_MISSING"


class LostResponse(grpc.RpcError):
    """What a client sees when the connection drops after the server took the request."""

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection reset"

    def trailing_metadata(self):
        return ()


def test_buy_retries_unavailable_with_the_same_key(server):
    sale_id = new_sale(server, allocated=4, per_user_limit=0, max_per_purchase=5)
    slept = []
    with Client(server.addr, sleep=slept.append) as buyer:
        buyer.register(new_email("cy"), "Cy", PASSWORD)
        real_purchase = buyer.purchases.Purchase
        requests = []

        def flaky_purchase(request, **kwargs):
            requests.append(request)
            response = real_purchase(request, **kwargs)
            if len(requests) < 3:
                raise LostResponse()  # the order was made, but its answer never arrived
            return response

        buyer.purchases.Purchase = flaky_purchase
        bought = buyer.buy(sale_id, 3)

        assert len(requests) == 3
        assert len({r.idempotency_key for r in requests}) == 1, "every retry reuses the key"
        assert bought.replayed, "the retries found the order the first attempt made"
        assert bought.order.idempotency_key == requests[0].idempotency_key
        assert slept == [0.1, 0.2]
        assert [o.id for o in buyer.orders(sale_id)] == [bought.order.id]
        assert admin_call(server, "GetSale", sale_id=sale_id).sold == 3, "bought once"

        # Errors that a retry cannot fix are raised at once.
        buyer.purchases.Purchase = real_purchase
        with pytest.raises(FlashsaleError) as too_many:
            buyer.buy(sale_id, 2)
        assert too_many.value.reason == "INSUFFICIENT_STOCK"
        assert too_many.value.metadata["remaining"] == "1"
        assert slept == [0.1, 0.2]


def test_buy_waits_out_rate_limits(tmp_path):
    limits = ("--buyer-purchases-per-sec", "1", "--ip-purchases-per-sec", "0",
              "--ip-logins-per-sec", "0")
    with running_server(tmp_path / "limited", limits) as server:
        sale_id = new_sale(server, allocated=10, per_user_limit=0, max_per_purchase=1)
        slept = []

        def sleep(seconds):
            slept.append(seconds)
            time.sleep(seconds)

        with Client(server.addr, sleep=sleep) as buyer:
            buyer.register(new_email("dee"), "Dee", PASSWORD)
            buyer.buy(sale_id, 1)
            second = buyer.buy(sale_id, 1)  # within the same second: RATE_LIMITED first
            assert not second.replayed
            assert len(slept) >= 1 and 0 < slept[0] <= 1.5, slept
            assert len(buyer.orders(sale_id)) == 2


def run_cli(server, *args, token=None, check=True):
    env = {**os.environ, "FLASHSALE_SERVER": server.addr, "FLASHSALE_PASSWORD": PASSWORD}
    env.pop("FLASHSALE_TOKEN", None)
    if token:
        env["FLASHSALE_TOKEN"] = token
    result = subprocess.run([sys.executable, str(HERE / "flashsale_client.py"), *args], env=env,
                            capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_the_command_line(server):
    sale_id = new_sale(server, allocated=10, per_user_limit=3, max_per_purchase=2)
    email = new_email("eve")

    registered = run_cli(server, "register", email, "Eve").stdout.strip()
    token = run_cli(server, "login", email).stdout.strip()
    assert registered.count(".") == 2 and token.count(".") == 2, "prints a JWT and nothing else"

    env = {**os.environ, "FLASHSALE_SERVER": server.addr}
    watch = subprocess.Popen([sys.executable, str(HERE / "flashsale_client.py"), "watch", sale_id],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A watch that never printed would block readline() for good: kill it after a while.
    guard = threading.Timer(4 * WAIT_SECS, watch.kill)
    guard.start()
    try:
        assert watch.stdout.readline().startswith("v"), "the first snapshot comes at once"

        bought = run_cli(server, "buy", sale_id, "2", "--key", "eve-1", token=token).stdout
        assert bought.startswith("order ") and "2 x 19.99 USD = 39.98 USD" in bought, bought
        assert "key eve-1" in bought and "replayed" not in bought
        assert "replayed" in run_cli(server, "buy", sale_id, "2", "--key", "eve-1",
                                     token=token).stdout

        refused = run_cli(server, "buy", sale_id, "2", token=token, check=False)
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: USER_LIMIT_REACHED"), refused.stderr
        assert "limit=3" in refused.stderr and "bought=2" in refused.stderr

        orders = run_cli(server, "orders", sale_id, token=token).stdout.splitlines()
        assert len(orders) == 1 and "key eve-1" in orders[0]

        admin_call(server, "EndSale", sale_id=sale_id)
        out, err = watch.communicate(timeout=WAIT_SECS)
        assert watch.returncode == 0, err
        assert out.splitlines()[-1].endswith("ENDED (BY_ADMIN) sold 2/10 remaining 8"), out
    finally:
        guard.cancel()
        watch.kill()
        watch.wait()


def test_a_hold_is_paid_or_cancelled_and_the_line_is_served(server):
    sale_id = new_sale(server, allocated=1, per_user_limit=1, max_per_purchase=1, hold_seconds=600)
    with Client(server.addr, server.token("buyer", "py-ann", "Ann")) as ann, \
            Client(server.addr, server.token("buyer", "py-cy", "Cy")) as cy:
        held = ann.buy(sale_id, 1).order
        assert held.status == common_pb2.ORDER_STATUS_HELD and held.HasField("expires_at")
        assert "pay within" in format_order(held)

        # Nothing left, one unit held: Cy waits in line.
        place = cy.join_waitlist(sale_id, 1)
        assert (place.position, place.quantity, place.length) == (1, 1, 1)
        assert format_place(place) == "in line: 1 of 1, for 1 unit"
        updates = cy.watch_my_orders(sale_id)
        first = next(updates)
        assert list(first.orders) == [] and first.waitlist.position == 1

        # Ann cancels: the unit goes to Cy as a hold, which Cy pays.
        cancelled = ann.cancel(held.id)
        assert cancelled.order.status == common_pb2.ORDER_STATUS_CANCELLED
        served = next(u for u in updates if u.orders)
        assert served.orders[0].status == common_pb2.ORDER_STATUS_HELD
        assert not served.HasField("waitlist")
        paid = cy.pay(served.orders[0].id, "psp-42")
        assert paid.order.status == common_pb2.ORDER_STATUS_CONFIRMED
        assert paid.order.payment_reference == "psp-42"
        assert cy.pay(served.orders[0].id, "psp-42").replayed

        # Every unit paid: the sale sold out, and the stream's last update says so.
        last = next(u for u in updates if u.last)
        assert last.sale_status == common_pb2.SALE_STATUS_ENDED
        with pytest.raises(FlashsaleError) as refused:
            ann.pay(held.id, "late")
        assert refused.value.reason == "ORDER_NOT_HELD"
        assert refused.value.metadata == {"status": "CANCELLED"}


def test_the_hold_commands(server):
    sale_id = new_sale(server, allocated=2, per_user_limit=0, max_per_purchase=1, hold_seconds=600)
    env = {**os.environ, "FLASHSALE_SERVER": server.addr, "FLASHSALE_TOKEN": server.token("buyer", "py-dee", "Dee")}
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, str(HERE / "flashsale_client.py"), *args], env=env, capture_output=True, text=True,
        timeout=WAIT_SECS,
    )
    bought = run("buy", sale_id, "1")
    assert bought.returncode == 0, bought.stderr
    assert "[HELD, pay within" in bought.stdout
    order_id = bought.stdout.split()[1]
    paid = run("pay", order_id, "--reference", "cli-ref")
    assert paid.returncode == 0 and "[CONFIRMED, paid cli-ref]" in paid.stdout, paid
    refused = run("cancel", order_id)
    assert refused.returncode == 1 and "ORDER_NOT_HELD" in refused.stderr, refused
    joined = run("join", sale_id, "1")
    assert joined.returncode == 1 and "WAITLIST_UNAVAILABLE" in joined.stderr, joined
    assert run("leave", sale_id).stdout.strip() == "was not in line"


def test_follow_orders_resumes_from_its_cursor_file(server, tmp_path):
    sale_id = new_sale(server, allocated=10, per_user_limit=0, max_per_purchase=1)
    with Client(server.addr, server.token("buyer", "py-fo", "Fo")) as buyer:
        bought = [buyer.buy(sale_id, 1).order.id for _ in range(5)]
        with pytest.raises(FlashsaleError) as refused:
            buyer.sale_orders(sale_id)
        assert refused.value.reason == "ROLE_NOT_ALLOWED"
    warehouse = server.token("fulfillment", "py-warehouse", "Warehouse")
    cursor = tmp_path / "cursor"
    follow = ("follow-orders", "--sale", sale_id, "--cursor-file", str(cursor))

    first = run_cli(server, *follow, "--max-events", "3", token=warehouse).stdout.splitlines()
    assert [line.split()[1] for line in first] == ["CREATED"] * 3, first
    assert int(cursor.read_text()) == int(first[-1].split()[0].lstrip("#")), "the cursor is the last event handled"

    # Two more orders while the consumer is away; it resumes after its cursor: no gap, no repeat.
    with Client(server.addr, server.token("buyer", "py-fo", "Fo")) as buyer:
        bought += [buyer.buy(sale_id, 1).order.id for _ in range(2)]
    rest = run_cli(server, *follow, "--max-events", "4", token=warehouse).stdout.splitlines()
    assert [line.split()[3] for line in first + rest] == bought
    sequences = [int(line.split()[0].lstrip("#")) for line in first + rest]
    assert sequences == sorted(sequences) and len(set(sequences)) == 7

    with Client(server.addr, warehouse) as shop:
        assert [order.id for order in shop.sale_orders(sale_id)] == bought
        confirmed = shop.sale_orders(sale_id, status=common_pb2.ORDER_STATUS_CONFIRMED)
        assert len(confirmed) == 7 and confirmed[0].buyer_name == "Fo"


WAITING, ADMITTED, CLOSED = (purchase_pb2.QUEUE_STATE_WAITING, purchase_pb2.QUEUE_STATE_ADMITTED,
                             purchase_pb2.QUEUE_STATE_CLOSED)


@contextmanager
def deadline(client: Client, what: str):
    """Fails the test when the block (following a stream of `client`) takes over WAIT_SECS: the
    client's channel is closed then, which cancels its streams."""
    expired = threading.Event()

    def expire():
        expired.set()
        client.close()

    timer = threading.Timer(WAIT_SECS, expire)
    timer.start()
    try:
        yield
    except FlashsaleError:
        if expired.is_set():
            pytest.fail(f"timed out waiting for {what}")
        raise
    finally:
        timer.cancel()


def queue_until(client: Client, sale_id: str, condition, what: str):
    """Follows the client's place in the sale's waiting room until an update meets `condition`,
    and returns it; the stream is closed then (the buyer keeps the place for the grace time)."""
    with deadline(client, what), closing(client.enter_queue(sale_id)) as updates:
        for update in updates:
            if condition(update):
                return update
    pytest.fail(f"the stream ended before {what}")


class BrokenStream:
    """An EnterQueue stream whose connection drops after its first update."""

    def __init__(self, stream):
        self.stream = stream

    def __iter__(self):
        yield next(self.stream)
        raise LostResponse()

    def cancel(self):
        self.stream.cancel()


def test_a_waiting_room_admits_buyers_with_passes(server):
    sale_id = new_sale(server, allocated=10, per_user_limit=0, max_per_purchase=2,
                       queue={"admit_per_second": 20})
    assert admin_call(server, "GetSale", sale_id=sale_id).queue.admit_per_second == 20

    # The command line waits for its turn, prints the pass, then buys with it.
    eve = server.token("buyer", "py-q-eve", "Eve")
    queued = run_cli(server, "queue", sale_id, "--buy", "--quantity", "2", token=eve).stdout.splitlines()
    assert queued[-3].startswith("admitted until "), queued
    eve_pass = queued[-2]
    assert eve_pass.count(".") == 1 and " " not in eve_pass, queued
    assert queued[-1].startswith("order ") and "2 x 19.99 USD = 39.98 USD" in queued[-1], queued
    assert all(line.startswith("waiting: position ") for line in queued[:-3]), queued

    with Client(server.addr, eve) as client:
        # Without a pass: refused, for a purchase and for the waitlist alike.
        with pytest.raises(FlashsaleError) as refused:
            client.buy(sale_id, 1)
        assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.PERMISSION_DENIED,
                                                              "ADMISSION_REQUIRED")
        with pytest.raises(FlashsaleError) as refused:
            client.join_waitlist(sale_id, 1)
        assert refused.value.reason == "ADMISSION_REQUIRED"
        # The pass serves for more purchases until it expires.
        assert client.buy(sale_id, 1, admission_pass=eve_pass).order.quantity == 1

    slept = []
    with Client(server.addr, server.token("buyer", "py-q-bob", "Bob"), sleep=slept.append) as bob:
        # Eve's pass is hers.
        with pytest.raises(FlashsaleError) as invalid:
            bob.buy(sale_id, 1, admission_pass=eve_pass)
        assert (invalid.value.reason, invalid.value.metadata) == ("ADMISSION_INVALID", {"problem": "OTHER_BUYER"})

        # Bob's first stream breaks after its first update: he enters again after a pause.
        real_enter = bob.purchases.EnterQueue
        entered = []

        def flaky_enter(request, **kwargs):
            entered.append(request)
            stream = real_enter(request, **kwargs)
            return BrokenStream(stream) if len(entered) == 1 else stream

        bob.purchases.EnterQueue = flaky_enter
        seen = []
        with deadline(bob, "Bob's admission"):
            admitted = bob.wait_for_admission(sale_id, seen.append)
        assert len(entered) == 2 and slept == [1.0], (entered, slept)
        assert seen[0].state == WAITING and seen[-1] == admitted, seen
        assert admitted.state == ADMITTED and admitted.sale_id == sale_id
        assert admitted.admission_pass and admitted.admission_pass != eve_pass
        assert admitted.admission_expires_at.ToDatetime() > admitted.server_time.ToDatetime()
        assert format_queue_update(admitted).startswith("admitted until ")

        bought = bob.buy(sale_id, 2, admission_pass=admitted.admission_pass)
        assert bought.order.quantity == 2 and not bought.replayed
        # The waitlist takes the pass too; past it, this sale has no line (no holds).
        with pytest.raises(FlashsaleError) as no_line:
            bob.join_waitlist(sale_id, 1, admission_pass=admitted.admission_pass)
        assert no_line.value.reason == "WAITLIST_UNAVAILABLE"

    # Without --buy the command line's last line is the pass alone, for `buy --pass`.
    cy = server.token("buyer", "py-q-cy", "Cy")
    queued = run_cli(server, "queue", sale_id, token=cy).stdout.splitlines()
    assert queued[-2].startswith("admitted until "), queued
    refused = run_cli(server, "buy", sale_id, "1", token=cy, check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ADMISSION_REQUIRED"), refused.stderr
    bought = run_cli(server, "buy", sale_id, "1", "--pass", queued[-1], token=cy).stdout
    assert bought.startswith("order ") and "1 x 19.99 USD" in bought, bought

    # A sale without a waiting room has none to enter.
    with Client(server.addr, cy) as client:
        with pytest.raises(FlashsaleError) as not_open:
            client.wait_for_admission(new_sale(server))
        assert (not_open.value.reason, not_open.value.metadata) == ("QUEUE_NOT_OPEN", {})


def test_entering_again_resumes_the_same_place(server):
    # One buyer admitted at a time, for 10 minutes: the line moves only when a buyer buys.
    sale_id = new_sale(server, allocated=10, per_user_limit=0, max_per_purchase=1,
                       queue={"max_active_buyers": 1, "admission_seconds": 600})
    token = lambda name: server.token("buyer", f"py-r-{name}", name.title())  # noqa: E731
    with Client(server.addr, token("ann")) as ann, Client(server.addr, token("bob")) as bob, \
            Client(server.addr, token("cy")) as cy:
        with deadline(ann, "Ann's admission"):
            ann_admitted = ann.wait_for_admission(sale_id)
        assert ann_admitted.state == ADMITTED

        # Ann's admission holds the only slot: Bob waits first, Cy behind him.
        queue_until(bob, sale_id, lambda u: (u.state, u.position) == (WAITING, 1), "Bob at position 1")
        queue_until(cy, sale_id, lambda u: (u.state, u.position, u.ahead) == (WAITING, 2, 1), "Cy at position 2")

        # Their streams closed; entering again resumes the same places (a new place for Bob
        # would be the 3rd, behind Cy, and nobody is admitted meanwhile).
        again = queue_until(bob, sale_id, lambda u: (u.state, u.position, u.waiting) == (WAITING, 1, 2),
                            "Bob back at position 1, 2 waiting")
        assert again.ahead == 0
        assert format_queue_update(again).startswith("waiting: position 1 (0 ahead)")
        with deadline(ann, "Ann's admission again"):
            ann_again = ann.wait_for_admission(sale_id)
        assert ann_again.admission_pass == ann_admitted.admission_pass
        assert ann_again.admission_expires_at == ann_admitted.admission_expires_at

        # Ann buys: her admission stops counting, and Bob, at the head, is admitted.
        ann.buy(sale_id, 1, admission_pass=ann_admitted.admission_pass)
        with deadline(bob, "Bob's admission"):
            bob_admitted = bob.wait_for_admission(sale_id)
        assert bob_admitted.admission_pass != ann_admitted.admission_pass

        # Cy waits at the head now (Bob holds the slot); the sale ends: the room tells him so.
        cy_updates, outcome = [], {}

        def cy_waits():
            try:
                outcome["admitted"] = cy.wait_for_admission(sale_id, cy_updates.append)
            except BaseException as error:  # reported by the test, not lost in the thread
                outcome["error"] = error

        thread = threading.Thread(target=cy_waits, daemon=True)
        thread.start()
        try:
            wait_for(lambda: outcome or any(u.position == 1 for u in cy_updates), "Cy at position 1")
            assert not outcome, outcome
            admin_call(server, "EndSale", sale_id=sale_id)
            thread.join(WAIT_SECS)
            assert not thread.is_alive(), "the room did not close when the sale ended"
        finally:
            cy.close()  # ends the stream if an assertion failed before the sale ended
            thread.join(WAIT_SECS)
        error = outcome.get("error")
        assert isinstance(error, QueueEnded) and error.state == "CLOSED", outcome
        assert error.update == cy_updates[-1] and cy_updates[-1].state == CLOSED
        assert str(error).startswith("CLOSED: the sale ended")

    # Entering an ended sale's room: CLOSED at once, an error for the command line.
    closed = run_cli(server, "queue", sale_id, token=token("dee"), check=False)
    assert closed.returncode == 1 and closed.stderr.startswith("error: CLOSED: "), closed
    assert closed.stdout.startswith("closed: the sale ended"), closed.stdout
    with Client(server.addr) as watcher:
        last = next(watcher.watch(sale_id))
    assert last.queue.max_active_buyers == 1
    assert "(waiting room: " in format_snapshot(last), format_snapshot(last)


def test_generated_code_matches_the_protos():
    generate.ensure()
    assert generate.is_current()
    assert {p.name for p in (generate.OUT / "flashsale" / "v1").glob("*_pb2*.py*")} >= {
        "purchase_pb2.py", "purchase_pb2_grpc.py", "purchase_pb2.pyi", "feeds_pb2_grpc.py"}
