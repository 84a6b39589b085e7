"""The README's grpcurl walkthrough, run for real: scripts/grpcurl-walkthrough.sh against a fresh
flashsale server, checking what it prints; and the README shows no command the script does not run.

Needs grpcurl (`$GRPCURL`, else .tools/bin/grpcurl) and the debug binary (`$FLASHSALE_BIN`, else
target/debug/flashsale); `scripts/test` provides both and runs this after `cargo test`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))

from flashsale_server import binary, running_server  # noqa: E402

SCRIPT = ROOT / "scripts" / "grpcurl-walkthrough.sh"
README = ROOT / "README.md"
SECTION = "## Run a sale with grpcurl"
HOLDS_SECTION = "## Holds, payment and the waitlist"
ORDERS_SECTION = "## Orders out to the shop"
QUEUE_SECTION = "## A fair waiting room"


def grpcurl() -> Path:
    path = Path(os.environ.get("GRPCURL") or ROOT / ".tools" / "bin" / "grpcurl")
    assert path.is_file(), f"grpcurl not found at {path}: run scripts/test, which installs it"
    return path


def json_values(text: str) -> list:
    """Every JSON value printed in `text` (grpcurl prints one indented object per message)."""
    decoder, values, index = json.JSONDecoder(), [], 0
    while (start := text.find("{", index)) != -1:
        value, index = decoder.raw_decode(text, start)
        values.append(value)
    return values


class Output:
    """The script's output, split at its `== step` headings."""

    def __init__(self, text: str):
        self.text = text
        self.steps = dict(re.findall(r"^== (.*)\n((?:(?!== ).*\n?)*)", text, flags=re.M))

    def step(self, words: str) -> str:
        found = [body for title, body in self.steps.items() if words in title]
        assert len(found) == 1, f"one step about {words!r} expected in:\n{self.text}"
        return found[0]


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> Output:
    with running_server(tmp_path_factory.mktemp("walkthrough")) as server:
        env = {**server.env(), "GRPCURL": str(grpcurl()), "FLASHSALE": str(binary())}
        result = subprocess.run(["bash", str(SCRIPT), server.addr], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=120)
    assert result.returncode == 0, f"the walkthrough failed ({result.returncode}):\n{result.stdout}"
    return Output(result.stdout)


def test_it_lists_the_services(walkthrough):
    listed = walkthrough.step("services").split()
    for service in ["flashsale.v1.AdminService", "flashsale.v1.AuthService",
                    "flashsale.v1.FeedsService", "flashsale.v1.PurchaseService",
                    "grpc.health.v1.Health"]:
        assert service in listed


def test_it_sets_up_and_starts_a_sale(walkthrough):
    [stocked] = json_values(walkthrough.step("a product"))
    assert stocked["inventory"] == "150"
    sale_step = walkthrough.step("a sale of 120 units")
    assert re.fullmatch(r"SALE=[0-9a-f-]{36}\n*", sale_step), sale_step
    [started] = json_values(walkthrough.step("start it now"))
    assert started["status"] == "SALE_STATUS_ACTIVE"
    assert (started["allocated"], started["remaining"]) == ("120", "120")


def test_the_buyer_gets_an_order_and_a_retry_replays_it(walkthrough):
    [registered] = json_values(walkthrough.step("registers"))
    assert registered["user"]["displayName"] == "Ann" and registered["accessToken"]

    [bought] = json_values(walkthrough.step("buys 2 units"))
    order = bought["order"]
    assert order["quantity"] == 2 and order["idempotencyKey"] == "ann-1"
    assert order["total"] == {"amountMinor": "3998", "currency": "USD"}
    assert order["buyerId"] == registered["user"]["id"]
    assert not bought.get("replayed")

    [again] = json_values(walkthrough.step("the same request again"))
    assert again["replayed"] is True and again["order"]["id"] == order["id"]

    refused = walkthrough.step("above the limit")
    assert "Code: ResourceExhausted" in refused and "per-user limit of 3" in refused, refused
    # Reflection describes google.rpc.ErrorInfo, so grpcurl prints the reason itself.
    [info] = json_values(refused)
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo", info
    assert info["reason"] == "USER_LIMIT_REACHED" and info["metadata"] == {"bought": "2", "limit": "3"}


def test_the_end_returns_unsold_units_and_the_watcher_saw_the_sale(walkthrough):
    ended, product = json_values(walkthrough.step("end the sale"))
    assert (ended["status"], ended["endReason"]) == ("SALE_STATUS_ENDED", "END_REASON_BY_ADMIN")
    assert (ended["sold"], ended["remaining"]) == ("2", "118")
    assert product["inventory"] == "148", "150 - 120 allocated + 118 unsold"

    [board] = json_values(walkthrough.step("leaderboard"))
    assert board["status"] == "SALE_STATUS_ENDED" and board["totalBuyers"] == "1"
    [entry] = board["entries"]
    assert (entry["rank"], entry["displayName"], entry["units"]) == (1, "Ann", "2")

    snapshots = json_values(walkthrough.step("what the watcher saw"))
    assert snapshots, "the watch printed nothing"
    sold = [int(s.get("sold", "0")) for s in snapshots]
    assert sold == sorted(sold) and set(sold) <= {0, 2}, sold
    last = snapshots[-1]
    assert (last["status"], last["sold"], last["remaining"]) == ("SALE_STATUS_ENDED", "2", "118")


def test_a_hold_is_cancelled_served_to_the_line_and_paid(walkthrough):
    [held] = json_values(walkthrough.step("the order is HELD"))
    order = held["order"]
    assert order["status"] == "ORDER_STATUS_HELD" and order["expiresAt"], order

    [place] = json_values(walkthrough.step("waits in line"))
    assert place["place"] == {"position": "1", "quantity": 1, "length": "1"}, place

    cancelled, listed = json_values(walkthrough.step("cancels"))
    assert cancelled["order"]["status"] == "ORDER_STATUS_CANCELLED"
    [served] = listed["orders"]
    assert served["status"] == "ORDER_STATUS_HELD" and served["buyerId"] == "bob", served
    assert served["idempotencyKey"] == f"waitlist-{served['id']}"

    [paid] = json_values(walkthrough.step("a payment service confirms it"))
    assert paid["order"]["status"] == "ORDER_STATUS_CONFIRMED"
    assert paid["order"]["paymentReference"] == "psp-0001"

    [sale] = json_values(walkthrough.step("ended SOLD_OUT"))
    assert (sale["status"], sale["endReason"]) == ("SALE_STATUS_ENDED", "END_REASON_SOLD_OUT")
    assert (sale["confirmed"], sale.get("held", "0"), sale["holdSeconds"]) == ("1", "0", 600), sale


def test_the_shop_pages_through_its_orders_and_follows_the_feed(walkthrough):
    first, second = json_values(walkthrough.step("a page at a time"))
    assert len(first["orders"]) == 1 and first["nextPageToken"], first
    assert len(second["orders"]) == 1 and "nextPageToken" not in second, second
    assert first["orders"][0]["id"] < second["orders"][0]["id"], "oldest first"
    assert second["orders"][0]["buyerName"] == "Bob"

    events = json_values(walkthrough.step("the order feed"))
    kinds = [(event["kind"], event["order"]["buyerId"]) for event in events]
    bob = second["orders"][0]["buyerId"]
    assert [kind for kind, _ in kinds] == [
        "ORDER_EVENT_KIND_CREATED", "ORDER_EVENT_KIND_CANCELLED",
        "ORDER_EVENT_KIND_CREATED", "ORDER_EVENT_KIND_CONFIRMED",
    ], kinds
    assert [buyer for _, buyer in kinds][2:] == [bob, bob]
    sequences = [int(event["sequence"]) for event in events]
    assert sequences == sorted(sequences) and len(set(sequences)) == 4, sequences

    rows = [line for line in walkthrough.step("as CSV").splitlines() if line and not line.startswith("exported")]
    assert rows[0].startswith("order_id,sale_id,buyer_id,buyer_name,quantity"), rows
    assert [row.split(",")[0] for row in rows[1:]] == [first["orders"][0]["id"], second["orders"][0]["id"]]
    assert "CANCELLED" in rows[1] and "CONFIRMED" in rows[2] and "psp-0001" in rows[2], rows


def test_a_waiting_room_admits_one_buyer_at_a_time_with_a_pass(walkthrough):
    refused = walkthrough.step("without an admission pass")
    assert "Code: PermissionDenied" in refused and "ADMISSION_REQUIRED" in refused, refused

    updates = json_values(walkthrough.step("enters the waiting room"))
    assert updates, "EnterQueue printed nothing"
    admitted = updates[-1]
    assert admitted["state"] == "QUEUE_STATE_ADMITTED" and admitted["admissionPass"], updates
    assert admitted["admissionExpiresAt"], admitted

    behind = json_values(walkthrough.step("waits behind the first"))
    assert behind and all(u["state"] == "QUEUE_STATE_WAITING" for u in behind), behind
    assert behind[0]["position"] == "1", behind[0]

    [bought] = json_values(walkthrough.step("with the pass"))
    assert bought["order"]["quantity"] == 1 and bought["order"]["idempotencyKey"] == "ann-q", bought


def command_lines(text: str) -> list[str]:
    """Lines of shell without a trailing comment (two spaces, `# `), blank or comment lines."""
    lines = (re.sub(r"\s{2,}# .*$", "", line).strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_shows_only_commands_the_script_runs():
    readme = README.read_text()
    script = command_lines(SCRIPT.read_text())
    for section_title, at_least in [(SECTION, 15), (HOLDS_SECTION, 10), (ORDERS_SECTION, 6), (QUEUE_SECTION, 5)]:
        assert section_title in readme, f"README.md has no {section_title!r} section"
        section = readme.split(section_title, 1)[1].split("\n## ", 1)[0]
        blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
        shown = [line for block in blocks if "flashsale.v1." in block for line in command_lines(block)]
        assert len(shown) >= at_least, f"the README's walkthrough block is missing:\n{section}"
        untested = [line for line in shown if not any(line in ran for ran in script)]
        assert not untested, f"README commands that scripts/grpcurl-walkthrough.sh does not run: {untested}"
