#!/usr/bin/env bash
# Runs a whole sale with grpcurl against a running server, as the README's "Run a sale with
# grpcurl" shows it, step by step: an admin token, a product, stock, a scheduled sale started by
# hand, a watcher, a buyer who registers, logs in and buys, the sale's end; then a sale with
# holds: a held order, a buyer waiting in line, a cancel that serves the line, a payment; the
# shop's orders out; a sale behind a waiting room.
# tests/walkthrough/ runs this script against a fresh server and checks what it prints.
#
# Usage: scripts/grpcurl-walkthrough.sh [ADDR]                     (default localhost:50051)
# Env:   GRPCURL    grpcurl binary (default .tools/bin/grpcurl, installed by scripts/test)
#        FLASHSALE  flashsale binary that mints the admin token (default target/release/flashsale);
#                   it signs with the server's secret, so give it the server's JWT_SECRET or
#                   DATA_DIR when the server has them (the default ./data matches `cargo run`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADDR="${1:-localhost:50051}"
GRPCURL="${GRPCURL:-$ROOT/.tools/bin/grpcurl}"
FLASHSALE="${FLASHSALE:-$ROOT/target/release/flashsale}"

step() { printf '\n== %s\n' "$*"; }
# g ARGS...: grpcurl over plaintext HTTP/2 (the server speaks h2c; reflection supplies the schema).
g() { "$GRPCURL" -plaintext "$@"; }
# field NAME: one top-level field of the JSON object on stdin.
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

WATCHED="$(mktemp)"
trap 'rm -f "$WATCHED" "$WATCHED.held" "$WATCHED.line" "$WATCHED.page" "$WATCHED.queue"' EXIT

step "the services (server reflection)"
g "$ADDR" list

step "an admin token, signed with the server's secret"
ADMIN=$("$FLASHSALE" token --role admin)
A="authorization: Bearer $ADMIN"

step "a product with 100 units in inventory, then 50 more"
PRODUCT=$(g -H "$A" -d '{"name": "Sneaker", "initial_inventory": 100}' \
            "$ADDR" flashsale.v1.AdminService/CreateProduct | field id)
echo "PRODUCT=$PRODUCT"
g -H "$A" -d "{\"product_id\": \"$PRODUCT\", \"units\": 50}" \
  "$ADDR" flashsale.v1.AdminService/AddStock

step "a sale of 120 units at 19.99 USD, at most 3 per buyer and 2 per purchase, tomorrow: SCHEDULED"
START=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
END=$(date -u -d '+1 day 15 min' +%Y-%m-%dT%H:%M:%SZ)
SALE=$(g -H "$A" -d @ "$ADDR" flashsale.v1.AdminService/CreateSale <<EOF | field id
{"product_id": "$PRODUCT", "allocated": 120,
 "unit_price": {"amount_minor": 1999, "currency": "USD"},
 "per_user_limit": 3, "max_per_purchase": 2,
 "start_time": "$START", "end_time": "$END"}
EOF
)
echo "SALE=$SALE"

step "start it now: ACTIVE until its end time, or until sold out"
g -H "$A" -d "{\"sale_id\": \"$SALE\"}" "$ADDR" flashsale.v1.AdminService/StartSale

step "watch it live, no token needed (in the background here; shown below once the sale ended)"
g -max-time 60 -d "{\"sale_id\": \"$SALE\"}" \
  "$ADDR" flashsale.v1.FeedsService/WatchSale >"$WATCHED" &
WATCHER=$!

step "a buyer registers, then logs in as a returning buyer would"
EMAIL="ann.$(date +%s%N)@example.com"  # a new account on every run
g -d "{\"email\": \"$EMAIL\", \"display_name\": \"Ann\", \"password\": \"correct horse\"}" \
  "$ADDR" flashsale.v1.AuthService/Register
BUYER=$(g -d "{\"email\": \"$EMAIL\", \"password\": \"correct horse\"}" \
          "$ADDR" flashsale.v1.AuthService/Login | field accessToken)
B="authorization: Bearer $BUYER"

step "the buyer buys 2 units; the idempotency key makes a retry safe"
g -H "$B" -d "{\"sale_id\": \"$SALE\", \"quantity\": 2, \"idempotency_key\": \"ann-1\"}" \
  "$ADDR" flashsale.v1.PurchaseService/Purchase

step "the same request again, as a retry: the same order, replayed; nothing is bought twice"
g -H "$B" -d "{\"sale_id\": \"$SALE\", \"quantity\": 2, \"idempotency_key\": \"ann-1\"}" \
  "$ADDR" flashsale.v1.PurchaseService/Purchase

step "2 more would make 4, above the limit of 3: refused (ResourceExhausted, USER_LIMIT_REACHED)"
if g -H "$B" -d "{\"sale_id\": \"$SALE\", \"quantity\": 2, \"idempotency_key\": \"ann-2\"}" \
     "$ADDR" flashsale.v1.PurchaseService/Purchase; then
    echo "the purchase above the limit was accepted" >&2
    exit 1
fi

step "end the sale: its unsold units go back to the product's inventory"
g -H "$A" -d "{\"sale_id\": \"$SALE\"}" "$ADDR" flashsale.v1.AdminService/EndSale
g -H "$A" -d "{\"product_id\": \"$PRODUCT\"}" "$ADDR" flashsale.v1.AdminService/GetProduct

step "the leaderboard: buyers by units (display names only); it ends too, as the sale has ended"
g -max-time 60 -d "{\"sale_id\": \"$SALE\", \"top_n\": 10}" \
  "$ADDR" flashsale.v1.FeedsService/Leaderboard

step "a sale with holds: 1 unit, HELD for 10 minutes until paid, then given back"
HOLD_SALE=$(g -H "$A" -d @ "$ADDR" flashsale.v1.AdminService/CreateSale <<EOF | field id
{"product_id": "$PRODUCT", "allocated": 1,
 "unit_price": {"amount_minor": 4999, "currency": "USD"},
 "max_per_purchase": 1, "hold_seconds": 600, "end_time": "$END"}
EOF
)
echo "HOLD_SALE=$HOLD_SALE"

step "the buyer takes the unit: the order is HELD until its expiresAt"
g -H "$B" -d "{\"sale_id\": \"$HOLD_SALE\", \"quantity\": 1, \"idempotency_key\": \"ann-hold\"}" \
  "$ADDR" flashsale.v1.PurchaseService/Purchase | tee "$WATCHED.held"
HELD=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["order"]["id"])' <"$WATCHED.held")

step "a second buyer finds nothing left and waits in line"
BOB=$("$FLASHSALE" token --role buyer --sub bob --name Bob)
W="authorization: Bearer $BOB"
g -H "$W" -d "{\"sale_id\": \"$HOLD_SALE\", \"quantity\": 1}" \
  "$ADDR" flashsale.v1.PurchaseService/JoinWaitlist

step "the first buyer cancels: the unit goes to the head of the line, as a new hold"
g -H "$B" -d "{\"order_id\": \"$HELD\"}" "$ADDR" flashsale.v1.PurchaseService/CancelOrder
for _ in $(seq 50); do  # the new hold is made durable a moment after the cancel
    g -H "$W" -d "{\"sale_id\": \"$HOLD_SALE\"}" "$ADDR" flashsale.v1.PurchaseService/ListMyOrders \
        >"$WATCHED.line"
    grep -q ORDER_STATUS_HELD "$WATCHED.line" && break
    sleep 0.1
done
cat "$WATCHED.line"
BOBS=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["orders"][0]["id"])' <"$WATCHED.line")

step "a payment service confirms it, with a token that may confirm orders and nothing else"
PAYMENTS=$(g -H "$A" -d '{"role": "ROLE_PAYMENTS", "name": "payments-webhook"}' \
             "$ADDR" flashsale.v1.AdminService/IssueServiceToken | field accessToken)
P="authorization: Bearer $PAYMENTS"
g -H "$P" -d "{\"order_id\": \"$BOBS\", \"payment_reference\": \"psp-0001\"}" \
  "$ADDR" flashsale.v1.PurchaseService/ConfirmOrder

step "every unit confirmed: the sale with holds ended SOLD_OUT"
g -H "$A" -d "{\"sale_id\": \"$HOLD_SALE\"}" "$ADDR" flashsale.v1.AdminService/GetSale

step "the shop gets its orders out: a fulfillment token lists a sale's orders, a page at a time"
FULFILLMENT=$(g -H "$A" -d '{"role": "ROLE_FULFILLMENT", "name": "warehouse"}' \
                "$ADDR" flashsale.v1.AdminService/IssueServiceToken | field accessToken)
F="authorization: Bearer $FULFILLMENT"
g -H "$F" -d "{\"sale_id\": \"$HOLD_SALE\", \"page_size\": 1}" \
  "$ADDR" flashsale.v1.OrdersService/ListSaleOrders | tee "$WATCHED.page"
NEXT=$(field nextPageToken <"$WATCHED.page")
g -H "$F" -d "{\"sale_id\": \"$HOLD_SALE\", \"page_size\": 1, \"page_token\": \"$NEXT\"}" \
  "$ADDR" flashsale.v1.OrdersService/ListSaleOrders

step "the order feed: every change of the sale's orders in commit order, each with its sequence"
g -H "$F" -max-time 3 -d "{\"sale_id\": \"$HOLD_SALE\", \"after_sequence\": 0}" \
  "$ADDR" flashsale.v1.OrdersService/WatchOrders || true  # it stays open: cut after 3 s

step "the same orders as CSV, for an operator"
"$FLASHSALE" export --sale "$HOLD_SALE" --format csv --addr "http://$ADDR" --token "$FULFILLMENT"

step "a sale behind a waiting room: buyers line up and are admitted one at a time"
QUEUE_SALE=$(g -H "$A" -d @ "$ADDR" flashsale.v1.AdminService/CreateSale <<EOF | field id
{"product_id": "$PRODUCT", "allocated": 2,
 "unit_price": {"amount_minor": 1999, "currency": "USD"},
 "max_per_purchase": 1, "end_time": "$END",
 "queue": {"max_active_buyers": 1, "admission_seconds": 120}}
EOF
)
echo "QUEUE_SALE=$QUEUE_SALE"

step "buying without an admission pass is refused (PermissionDenied, ADMISSION_REQUIRED)"
g -H "$B" -d "{\"sale_id\": \"$QUEUE_SALE\", \"quantity\": 1, \"idempotency_key\": \"ann-q\"}" \
  "$ADDR" flashsale.v1.PurchaseService/Purchase 2>&1 || true

step "the buyer enters the waiting room and is admitted, with a pass"
g -H "$B" -max-time 3 -d "{\"sale_id\": \"$QUEUE_SALE\"}" \
  "$ADDR" flashsale.v1.PurchaseService/EnterQueue | tee "$WATCHED.queue" || true  # cut after 3 s
PASS=$(grep -o '"admissionPass": "[^"]*"' "$WATCHED.queue" | tail -n 1 | cut -d '"' -f 4)

step "a second buyer waits behind the first: position 1"
g -H "$W" -max-time 2 -d "{\"sale_id\": \"$QUEUE_SALE\"}" \
  "$ADDR" flashsale.v1.PurchaseService/EnterQueue || true  # cut after 2 s

step "with the pass, the purchase goes through"
g -H "$B" -d "{\"sale_id\": \"$QUEUE_SALE\", \"quantity\": 1, \"idempotency_key\": \"ann-q\", \"admission_pass\": \"$PASS\"}" \
  "$ADDR" flashsale.v1.PurchaseService/Purchase

step "what the watcher saw; its stream ended after the ENDED snapshot"
WATCH_STATUS=0
wait "$WATCHER" || WATCH_STATUS=$?
cat "$WATCHED"
exit "$WATCH_STATUS"
