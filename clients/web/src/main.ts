// The flashsale page: watch a sale live (status, countdown, remaining stock, leaderboard), log
// in or register, wait in the sale's waiting room if it has one, and buy. Everything goes over
// grpc-web to the page's own origin (or `?api=`).

import { Code } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { apiBaseUrl, createApi } from "./api.js";
import { describe, failureOf, isSessionExpired, isTransient, type Failure } from "./errors.js";
import { runFeed, type FeedState } from "./feed.js";
import { ServerClock, about, countdown, idempotencyKey, millis, money } from "./format.js";
import { EndReason, SaleStatus } from "./gen/flashsale/v1/common_pb.js";
import { OrderStatus } from "./gen/flashsale/v1/common_pb.js";
import type { Order, WaitlistPlace } from "./gen/flashsale/v1/common_pb.js";
import type { LeaderboardSnapshot, SaleSnapshot } from "./gen/flashsale/v1/feeds_pb.js";
import { QueueState } from "./gen/flashsale/v1/purchase_pb.js";
import type { MyOrdersUpdate, QueueUpdate } from "./gen/flashsale/v1/purchase_pb.js";

// ---- DOM -------------------------------------------------------------------------------------

function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing from the page`);
  return el as T;
}

const ui = {
  saleForm: $<HTMLFormElement>("sale-form"),
  saleId: $<HTMLInputElement>("sale-id"),
  conn: $("conn"),
  status: $("status"),
  countdown: $("countdown"),
  stockBar: $("stock-bar"),
  stockFill: $("stock-fill"),
  remaining: $("remaining"),
  allocated: $("allocated"),
  sold: $("sold"),
  heldText: $("held-text"),
  held: $("held"),
  waiting: $("waiting"),
  waitlistBox: $("waitlist-box"),
  waitlistText: $("waitlist-text"),
  join: $<HTMLButtonElement>("join"),
  leave: $<HTMLButtonElement>("leave"),
  price: $("price"),
  perUser: $("per-user"),
  perOrder: $("per-order"),
  roomText: $("room-text"),
  roomWaiting: $("room-waiting"),
  roomAdmitted: $("room-admitted"),
  saleError: $("sale-error"),
  signedOut: $("signed-out"),
  signedIn: $("signed-in"),
  tabLogin: $<HTMLButtonElement>("tab-login"),
  tabRegister: $<HTMLButtonElement>("tab-register"),
  authForm: $<HTMLFormElement>("auth-form"),
  email: $<HTMLInputElement>("email"),
  nameRow: $("name-row"),
  displayName: $<HTMLInputElement>("display-name"),
  password: $<HTMLInputElement>("password"),
  authSubmit: $<HTMLButtonElement>("auth-submit"),
  whoName: $("who-name"),
  whoEmail: $("who-email"),
  logout: $<HTMLButtonElement>("logout"),
  queueBox: $("queue-box"),
  queueText: $("queue-text"),
  queueDetail: $("queue-detail"),
  enterQueue: $<HTMLButtonElement>("enter-queue"),
  buyForm: $<HTMLFormElement>("buy-form"),
  quantity: $<HTMLInputElement>("quantity"),
  buy: $<HTMLButtonElement>("buy"),
  retry: $<HTMLButtonElement>("retry"),
  message: $("message"),
  ordersBox: $("orders-box"),
  orders: $<HTMLTableElement>("orders"),
  noOrders: $("no-orders"),
  leaderboard: $<HTMLTableElement>("leaderboard"),
  boardEmpty: $("board-empty"),
  buyers: $("buyers"),
  foot: $("foot"),
};

function say(text: string, kind: "info" | "ok" | "error" | "warn" = "info"): void {
  ui.message.textContent = text;
  ui.message.className = `message ${kind}`;
  ui.message.dataset.kind = kind;
}

// ---- session (token kept for this tab only; never a cookie) ----------------------------------

interface Session {
  token: string;
  expiresAtMs: number;
  userId: string;
  email: string;
  displayName: string;
}

const SESSION_KEY = "flashsale.session";

function loadSession(): Session | null {
  try {
    const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null") as Session | null;
    return s && s.token && s.expiresAtMs > Date.now() ? s : null;
  } catch {
    return null;
  }
}

let session: Session | null = loadSession();

function setSession(s: Session | null): void {
  session = s;
  try {
    if (s) sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
    else sessionStorage.removeItem(SESSION_KEY);
  } catch {
    // storage may be disabled: the session then lasts as long as the page
  }
  if (!s) place = undefined;
  leaveQueue();
  renderSession();
  followMyOrders();
}

// ---- state -----------------------------------------------------------------------------------

const api = createApi(apiBaseUrl(location), () => session?.token ?? null);
const clock = new ServerClock();

let saleId = "";
let snapshot: SaleSnapshot | null = null;
let board: LeaderboardSnapshot | null = null;
let watching: AbortController | null = null;
const feedStates: { sale: FeedState; board: FeedState } = { sale: { kind: "done" }, board: { kind: "done" } };

/** The purchase awaiting a retry after UNAVAILABLE: the same key makes the retry safe. */
let pending: { key: string; saleId: string; quantity: number } | null = null;
let buying = false;

/** The signed-in buyer's orders in the watched sale and place in its line (WatchMyOrders). */
let myOrders: Order[] = [];
let place: WaitlistPlace | undefined;
let following: AbortController | null = null;

/**
 * The signed-in buyer in the watched sale's waiting room (EnterQueue): the latest update, whose
 * `admissionPass` goes with every Purchase and JoinWaitlist of the sale while ADMITTED.
 */
let queued: QueueUpdate | undefined;
let queueFeed: FeedState = { kind: "done" };
let queueing: AbortController | null = null;

// ---- rendering -------------------------------------------------------------------------------

const statusNames: Record<number, string> = {
  [SaleStatus.SCHEDULED]: "Scheduled",
  [SaleStatus.ACTIVE]: "Live",
  [SaleStatus.ENDED]: "Ended",
};
const endNames: Record<number, string> = {
  [EndReason.SOLD_OUT]: "sold out",
  [EndReason.TIME_UP]: "time is up",
  [EndReason.BY_ADMIN]: "closed by the shop",
};

function renderSale(): void {
  const s = snapshot;
  if (!s) {
    ui.status.textContent = "—";
    ui.status.className = "badge";
    for (const el of [ui.remaining, ui.allocated, ui.sold, ui.price, ui.perUser, ui.perOrder]) el.textContent = "–";
    ui.stockFill.style.width = "0%";
    ui.countdown.textContent = saleId ? "Connecting…" : "Enter a sale id to watch it live.";
    renderBuyable();
    return;
  }
  const status = statusNames[s.status] ?? "Unknown";
  ui.status.textContent = s.status === SaleStatus.ENDED && endNames[s.endReason] ? `Ended · ${endNames[s.endReason]}` : status;
  ui.status.className = `badge ${SaleStatus[s.status]?.toLowerCase() ?? ""}`;
  ui.status.dataset.status = SaleStatus[s.status] ?? "";
  const allocated = Number(s.allocated);
  const remaining = Number(s.remaining);
  ui.remaining.textContent = String(remaining);
  ui.allocated.textContent = String(allocated);
  ui.sold.textContent = String(Number(s.sold));
  const pct = allocated > 0 ? Math.max(0, Math.min(100, (remaining / allocated) * 100)) : 0;
  ui.stockFill.style.width = `${pct.toFixed(1)}%`;
  ui.stockFill.className = `fill${pct <= 10 ? " low" : pct <= 33 ? " mid" : ""}`;
  ui.stockBar.setAttribute("aria-valuemax", String(allocated));
  ui.stockBar.setAttribute("aria-valuenow", String(remaining));
  ui.price.textContent = money(s.unitPrice);
  ui.perUser.textContent = s.perUserLimit === 0 ? "no limit" : `up to ${s.perUserLimit} units`;
  ui.perOrder.textContent = `up to ${s.maxPerPurchase} units`;
  ui.quantity.max = String(Math.max(1, s.maxPerPurchase));
  ui.heldText.hidden = s.holdSeconds === 0;
  ui.held.textContent = String(Number(s.held));
  ui.waiting.textContent = String(Number(s.waitlistLength));
  renderCountdown();
  renderBuyable();
  renderWaitlist();
  renderQueue();
}

/** The line: shown in a sale with holds once nothing is left but units may come back. */
function renderWaitlist(): void {
  const s = snapshot;
  // Not offered to a buyer who holds units of the sale themselves (they pay or cancel first).
  const holding = myOrders.some((o) => o.status === OrderStatus.HELD);
  // In a sale with a waiting room, only an admitted buyer may join (the line needs the pass too).
  const open = !!s && s.holdSeconds > 0 && s.status === SaleStatus.ACTIVE && Number(s.remaining) === 0 && Number(s.held) > 0 && !holding
    && (!s.queue || admissionPass() !== "");
  ui.waitlistBox.hidden = !session || !s || (!place && !open);
  ui.join.hidden = !!place;
  ui.leave.hidden = !place;
  ui.waitlistText.textContent = place
    ? `You are ${place.position} of ${place.length} in line for ${place.quantity} unit${place.quantity === 1 ? "" : "s"}: units given back by buyers who do not pay come to you first.`
    : "Sold out for now. Units held by other buyers come back if they do not pay: join the waitlist to get them first.";
}

/** A time of today, or a date and time. */
function when(d: Date): string {
  return d.toDateString() === new Date(clock.now()).toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

function renderCountdown(): void {
  const s = snapshot;
  if (!s) return;
  const now = clock.now();
  const start = millis(s.startTime);
  const end = millis(s.endTime);
  let text: string;
  if (s.status === SaleStatus.ENDED) {
    const at = s.endedAt ? when(timestampDate(s.endedAt)) : "";
    text = s.endReason === EndReason.SOLD_OUT ? `Sold out${at ? ` at ${at}` : ""}.` : `The sale ended${at ? ` at ${at}` : ""}.`;
  } else if (s.status === SaleStatus.SCHEDULED && start !== undefined) {
    text = start > now ? `Starts in ${countdown(start - now)}` : "Starting…";
  } else if (end !== undefined) {
    text = end > now ? `Ends in ${countdown(end - now)}` : "Ending…";
  } else {
    text = "";
  }
  ui.countdown.textContent = text;
  ui.countdown.classList.toggle("over", s.status === SaleStatus.ENDED);
}

function renderBoard(): void {
  const body = ui.leaderboard.tBodies[0];
  const rows: HTMLTableRowElement[] = [];
  for (const e of board?.entries ?? []) {
    const tr = document.createElement("tr");
    if (session && e.displayName === session.displayName) tr.className = "me";
    for (const [cls, text] of [
      ["rank", String(e.rank)],
      ["name", e.displayName],
      ["units", String(Number(e.units))],
    ]) {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = text;
      tr.append(td);
    }
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  ui.boardEmpty.hidden = rows.length > 0;
  const total = board ? Number(board.totalBuyers) : 0;
  ui.buyers.textContent = total > rows.length ? `${total} buyers in all` : "";
}

function renderConn(): void {
  const states = [feedStates.sale, feedStates.board];
  let text: string;
  let cls: string;
  const retrying = states.find((s) => s.kind === "retrying");
  if (!saleId) {
    [text, cls] = ["not watching", "idle"];
  } else if (states.some((s) => s.kind === "failed")) {
    [text, cls] = ["stopped", "down"];
  } else if (retrying && retrying.kind === "retrying") {
    [text, cls] = [`reconnecting in ${Math.ceil(retrying.inMs / 1000)} s…`, "down"];
  } else if (states.some((s) => s.kind === "connecting")) {
    [text, cls] = ["connecting…", "wait"];
  } else if (states.every((s) => s.kind === "done")) {
    [text, cls] = ["final", "idle"];
  } else {
    [text, cls] = ["live", "live"];
  }
  ui.conn.textContent = text;
  ui.conn.className = `conn ${cls}`;
  ui.conn.dataset.state = cls;
}

function renderBuyable(): void {
  const ended = snapshot?.status === SaleStatus.ENDED;
  ui.buy.disabled = buying || !session || !saleId || !snapshot || ended;
  ui.retry.hidden = !pending || pending.saleId !== saleId;
  ui.retry.disabled = buying;
  ui.buy.textContent = ended ? (snapshot?.endReason === EndReason.SOLD_OUT ? "Sold out" : "Sale ended") : buying ? "Buying…" : "Buy";
}

function renderSession(): void {
  ui.signedOut.hidden = !!session;
  ui.signedIn.hidden = !session;
  if (session) {
    ui.whoName.textContent = session.displayName;
    ui.whoEmail.textContent = `(${session.email})`;
  }
  ui.ordersBox.hidden = !session || !saleId;
  renderBuyable();
  renderBoard();
  renderWaitlist();
  renderQueue();
}

const orderStatusNames: Record<number, string> = {
  [OrderStatus.HELD]: "Held",
  [OrderStatus.CONFIRMED]: "Confirmed",
  [OrderStatus.CANCELLED]: "Cancelled",
  [OrderStatus.EXPIRED]: "Expired",
};

/** A held order's status with the time left to pay, on the server's clock. */
function orderStatusText(o: Order): string {
  const name = orderStatusNames[o.status] ?? "";
  const deadline = millis(o.expiresAt);
  if (o.status !== OrderStatus.HELD || deadline === undefined) return name;
  const left = deadline - clock.now();
  return left > 0 ? `Held · pay within ${countdown(left)}` : "Held · expiring…";
}

function renderOrders(orders: Order[] = myOrders): void {
  myOrders = orders;
  const rows = orders
    .slice()
    .reverse()
    .map((o) => {
      const tr = document.createElement("tr");
      const cells: [string, string][] = [
        ["time", o.createdAt ? timestampDate(o.createdAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : ""],
        ["units", String(o.quantity)],
        ["total", money(o.total)],
      ];
      for (const [cls, text] of cells) {
        const td = document.createElement("td");
        td.className = cls;
        td.textContent = text;
        tr.append(td);
      }
      // The status, and for a held order what the buyer can do about it.
      const status = document.createElement("td");
      status.className = "status";
      const state = document.createElement("span");
      state.className = "state";
      state.textContent = orderStatusText(o);
      status.append(state);
      if (o.status === OrderStatus.HELD) {
        const actions = document.createElement("span");
        actions.className = "actions";
        for (const [cls, label] of [["pay", "Pay"], ["cancel", "Cancel"]]) {
          const button = document.createElement("button");
          button.type = "button";
          button.className = cls === "pay" ? "pay" : "cancel secondary";
          button.textContent = label;
          button.dataset.orderId = o.id;
          button.addEventListener("click", () => void (cls === "pay" ? pay(o.id) : cancel(o.id)));
          actions.append(button);
        }
        status.append(actions);
      }
      tr.append(status);
      tr.title = `order ${o.id}`;
      tr.dataset.orderId = o.id;
      tr.dataset.status = OrderStatus[o.status] ?? "";
      return tr;
    });
  ui.orders.tBodies[0].replaceChildren(...rows);
  ui.orders.hidden = rows.length === 0;
  ui.noOrders.hidden = rows.length > 0;
  ui.ordersBox.hidden = false;
}

// ---- watching a sale -------------------------------------------------------------------------

function watch(id: string): void {
  watching?.abort();
  saleId = id.trim();
  snapshot = null;
  board = null;
  ui.saleId.value = saleId;
  ui.saleError.hidden = true;
  ui.orders.tBodies[0].replaceChildren();
  myOrders = [];
  place = undefined;
  leaveQueue();
  say("");
  const url = new URL(location.href);
  if (saleId) url.searchParams.set("sale", saleId);
  else url.searchParams.delete("sale");
  history.replaceState(null, "", url);
  renderSale();
  renderBoard();
  renderSession();
  if (!saleId) {
    renderConn();
    return;
  }
  const ctl = new AbortController();
  watching = ctl;
  const id0 = saleId;
  const onFailed = (state: FeedState) => {
    if (state.kind === "failed" && ctl === watching) {
      ui.saleError.textContent = describe(state.failure);
      ui.saleError.hidden = false;
      ui.countdown.textContent = "";
    }
  };
  void runFeed<SaleSnapshot>({
    signal: ctl.signal,
    open: (signal) => api.feeds.watchSale({ saleId: id0 }, { signal }),
    isFinal: (m) => m.status === SaleStatus.ENDED,
    onMessage: (m) => {
      clock.observe(m.serverTime);
      snapshot = m;
      renderSale();
    },
    onState: (state) => {
      feedStates.sale = state;
      renderConn();
      onFailed(state);
    },
  });
  void runFeed<LeaderboardSnapshot>({
    signal: ctl.signal,
    open: (signal) => api.feeds.leaderboard({ saleId: id0, topN: 10 }, { signal }),
    isFinal: (m) => m.status === SaleStatus.ENDED,
    onMessage: (m) => {
      board = m;
      renderBoard();
    },
    onState: (state) => {
      feedStates.board = state;
      renderConn();
      onFailed(state);
    },
  });
  void refreshOrders();
  followMyOrders();
}

/** Follows the buyer's orders and place in the watched sale (WatchMyOrders), while signed in. */
function followMyOrders(): void {
  following?.abort();
  following = null;
  if (!session || !saleId) return;
  const ctl = new AbortController();
  following = ctl;
  const id0 = saleId;
  void runFeed<MyOrdersUpdate>({
    signal: ctl.signal,
    open: (signal) => api.purchase.watchMyOrders({ saleId: id0 }, { signal }),
    isFinal: (m) => m.last,
    onMessage: (m) => {
      if (ctl !== following) return;
      clock.observe(m.serverTime);
      place = m.waitlist;
      renderOrders(m.orders);
      renderWaitlist();
    },
    onState: (state) => {
      if (state.kind === "failed" && isSessionExpired(state.failure) && ctl === following) sessionExpired();
    },
  });
}

// ---- holds and the waitlist ------------------------------------------------------------------

/** Pays a held order (a test payment: the page has no payment provider). */
async function pay(orderId: string): Promise<void> {
  say("Paying…");
  try {
    const res = await api.purchase.confirmOrder({ orderId, paymentReference: `test-${idempotencyKey()}` });
    say(`Paid: order …${orderId.slice(-8)} is confirmed.`, "ok");
    if (res.order) patchOrder(res.order);
  } catch (err) {
    onHoldFailure(err);
  }
}

async function cancel(orderId: string): Promise<void> {
  say("Cancelling…");
  try {
    const res = await api.purchase.cancelOrder({ orderId });
    say(`Cancelled: order …${orderId.slice(-8)}; its units went back.`, "ok");
    if (res.order) patchOrder(res.order);
  } catch (err) {
    onHoldFailure(err);
  }
}

function onHoldFailure(err: unknown): void {
  const f = failureOf(err);
  if (isSessionExpired(f)) sessionExpired();
  else say(describe(f, () => clock.now()), "error");
  void refreshOrders();
}

/** Shows an order's new state at once (the stream confirms it a moment later). */
function patchOrder(order: Order): void {
  renderOrders(myOrders.map((o) => (o.id === order.id ? order : o)));
}

async function joinWaitlist(): Promise<void> {
  const quantity = Math.max(1, Math.floor(Number(ui.quantity.value)) || 1);
  try {
    place = (await api.purchase.joinWaitlist({ saleId, quantity, admissionPass: admissionPass() })).place;
    say(place ? `You are in line: ${place.position} of ${place.length}.` : "You are in line.", "ok");
  } catch (err) {
    const f = failureOf(err);
    if (isSessionExpired(f)) sessionExpired();
    else say(describe(f, () => clock.now()), "error");
  }
  renderWaitlist();
}

async function leaveWaitlist(): Promise<void> {
  try {
    await api.purchase.leaveWaitlist({ saleId });
    place = undefined;
    say("You left the line.");
  } catch (err) {
    say(describe(failureOf(err), () => clock.now()), "error");
  }
  renderWaitlist();
}

// ---- the waiting room ------------------------------------------------------------------------

/** The pass of the buyer's admission to a sale's room (the watched sale by default); "" when not admitted. */
function admissionPass(forSale = saleId): string {
  return queued?.state === QueueState.ADMITTED && queued.saleId === forSale ? queued.admissionPass : "";
}

/**
 * Enters the watched sale's waiting room and follows the buyer's place. When the stream drops it
 * enters again, which resumes the same place (or admission) on the server.
 */
function enterQueue(): void {
  leaveQueue();
  if (!session || !saleId) return;
  const ctl = new AbortController();
  queueing = ctl;
  const id0 = saleId;
  say("");
  void runFeed<QueueUpdate>({
    signal: ctl.signal,
    open: (signal) => api.purchase.enterQueue({ saleId: id0 }, { signal }),
    isFinal: (m) => m.state === QueueState.EXPIRED || m.state === QueueState.CLOSED,
    permanent: (f) => f.reason === "QUEUE_NOT_OPEN" || isSessionExpired(f),
    onMessage: (m) => {
      if (ctl !== queueing) return;
      clock.observe(m.serverTime);
      queued = m;
      renderQueue();
      renderWaitlist();
    },
    onState: (state) => {
      if (ctl !== queueing) return;
      queueFeed = state;
      if (state.kind === "failed") {
        if (isSessionExpired(state.failure)) return sessionExpired();
        say(describe(state.failure, () => clock.now()), "error");
      }
      renderQueue();
    },
  });
}

/** Stops following the room (the server keeps the place for a grace time). */
function leaveQueue(): void {
  queueing?.abort();
  queueing = null;
  queued = undefined;
  queueFeed = { kind: "done" };
}

/** The room's counts in the sale card, and in the buy card the buyer's place, or the door. */
function renderQueue(): void {
  const s = snapshot;
  const room = !!s?.queue;
  ui.roomText.hidden = !room;
  ui.roomWaiting.textContent = String(Number(s?.queueWaiting ?? 0n));
  ui.roomAdmitted.textContent = String(Number(s?.queueAdmitted ?? 0n));
  const ended = s?.status === SaleStatus.ENDED;
  // With a room, the buy form waits for the buyer's turn (an ended sale shows it disabled).
  ui.buyForm.hidden = room && !ended && admissionPass() === "";
  ui.queueBox.hidden = !session || !s || !room;
  if (!s || !room || !session) return;

  const now = clock.now();
  const q = queued?.saleId === saleId ? queued : undefined;
  const inRoom = queueing !== null && queueFeed.kind !== "done" && queueFeed.kind !== "failed";
  const counts = q ? `${Number(q.waiting)} waiting · ${Number(q.admitted)} admitted` : "";
  let text: string;
  let detail = counts;
  let door: string | null = null; // the enter button's label; null hides it
  if (ended || q?.state === QueueState.CLOSED) {
    text = "The sale is closed: nobody else will be admitted.";
    detail = "";
  } else if (q?.state === QueueState.ADMITTED) {
    const left = (millis(q.admissionExpiresAt) ?? now) - now;
    text = left > 0 ? `It's your turn: buy within ${countdown(left)}.` : "Your turn is ending…";
  } else if (q?.state === QueueState.EXPIRED) {
    text = "Your turn to buy expired. Enter again to take a new place at the back of the line.";
    door = "Enter again";
  } else if (q?.state === QueueState.WAITING && q.prequeue) {
    const start = millis(q.startsAt) ?? millis(s.startTime) ?? now;
    text = start > now
      ? `You are in the waiting room. The order of the line is drawn at random when the sale starts at ${when(new Date(start))} (in ${countdown(start - now)}).`
      : "You are in the waiting room. The order of the line is being drawn…";
  } else if (q?.state === QueueState.WAITING) {
    text = `You are ${Number(q.position)} in line.`;
    const wait = q.estimatedWait ? Number(q.estimatedWait.seconds) * 1000 + q.estimatedWait.nanos / 1e6 : undefined;
    if (wait !== undefined) detail = `Estimated wait: ${about(wait)} · ${counts}`;
  } else if (inRoom) {
    text = "Entering the waiting room…";
  } else {
    const opensAt = (millis(s.startTime) ?? 0) - (s.queue?.prequeueSeconds ?? 0) * 1000;
    door = "Enter the waiting room";
    text = s.status === SaleStatus.SCHEDULED && opensAt > now
      ? `This sale has a waiting room. It opens at ${when(new Date(opensAt))} (in ${countdown(opensAt - now)}).`
      : "This sale has a waiting room: enter it and wait for your turn to buy.";
  }
  if (queueFeed.kind === "retrying") detail = `Connection lost: entering again in ${Math.ceil(queueFeed.inMs / 1000)} s (your place is kept).`;
  ui.queueBox.dataset.state = q ? QueueState[q.state] : "";
  ui.queueText.textContent = text;
  ui.queueDetail.textContent = detail;
  ui.queueDetail.hidden = !detail;
  ui.enterQueue.hidden = door === null;
  ui.enterQueue.textContent = door ?? "";
}

// ---- account ---------------------------------------------------------------------------------

let registering = false;

function setMode(register: boolean): void {
  registering = register;
  ui.tabLogin.classList.toggle("active", !register);
  ui.tabRegister.classList.toggle("active", register);
  ui.tabLogin.setAttribute("aria-selected", String(!register));
  ui.tabRegister.setAttribute("aria-selected", String(register));
  ui.nameRow.hidden = !register;
  ui.displayName.required = register;
  ui.password.autocomplete = register ? "new-password" : "current-password";
  ui.authSubmit.textContent = register ? "Register" : "Log in";
}

async function authenticate(): Promise<void> {
  ui.authSubmit.disabled = true;
  say(registering ? "Creating your account…" : "Logging in…");
  try {
    const email = ui.email.value.trim();
    const password = ui.password.value;
    const res = registering
      ? await api.auth.register({ email, password, displayName: ui.displayName.value.trim() })
      : await api.auth.login({ email, password });
    setSession({
      token: res.accessToken,
      expiresAtMs: millis(res.expiresAt) ?? Date.now() + 3600_000,
      userId: res.user?.id ?? "",
      email: res.user?.email ?? email,
      displayName: res.user?.displayName ?? email,
    });
    ui.password.value = "";
    say(`Welcome, ${session?.displayName}.`, "ok");
    await refreshOrders();
  } catch (err) {
    say(describe(failureOf(err), () => clock.now()), "error");
  } finally {
    ui.authSubmit.disabled = false;
  }
}

function sessionExpired(): void {
  setSession(null);
  pending = null;
  say("Your session has expired: log in again.", "warn");
}

async function refreshOrders(): Promise<void> {
  if (!session || !saleId) return;
  const forSale = saleId;
  try {
    const res = await api.purchase.listMyOrders({ saleId: forSale });
    if (forSale === saleId) renderOrders(res.orders);
  } catch (err) {
    const f = failureOf(err);
    if (isSessionExpired(f)) sessionExpired();
  }
}

// ---- buying ----------------------------------------------------------------------------------

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * One intended purchase. Transient failures (UNAVAILABLE, a dropped connection) are retried a
 * few times with the same idempotency key, so the buyer never pays twice; after that the key is
 * kept and the Retry button sends it again.
 */
async function purchase(attempt: { key: string; saleId: string; quantity: number }): Promise<void> {
  buying = true;
  pending = null;
  renderBuyable();
  say(`Buying ${attempt.quantity}…`);
  try {
    for (let tries = 0; ; tries++) {
      try {
        const res = await api.purchase.purchase({
          saleId: attempt.saleId,
          quantity: attempt.quantity,
          idempotencyKey: attempt.key,
          admissionPass: admissionPass(attempt.saleId),
        });
        const o = res.order;
        const what = `${o?.quantity ?? attempt.quantity} unit${(o?.quantity ?? attempt.quantity) === 1 ? "" : "s"} for ${money(o?.total)}`;
        const again = res.replayed ? " It had already gone through; nothing was charged twice." : "";
        const deadline = millis(o?.expiresAt);
        if (o?.status === OrderStatus.HELD && deadline !== undefined) {
          say(`Held for you: ${what} (order …${o.id.slice(-8)}). Pay within ${countdown(deadline - clock.now())}, or the units go to the next buyer.${again}`, "ok");
        } else {
          say(`Order confirmed: ${what} (order …${o?.id.slice(-8) ?? ""}).${again}`, "ok");
        }
        ui.message.dataset.orderId = o?.id ?? "";
        await refreshOrders();
        return;
      } catch (err) {
        const f: Failure = failureOf(err);
        if (isTransient(f)) {
          if (tries < 3) {
            say(`The service did not answer; trying again with the same purchase key (${tries + 1}/3)…`, "warn");
            await sleep(400 * 2 ** tries);
            continue;
          }
          pending = attempt;
          say(`${describe(f)} Your purchase may not have gone through. Retry is safe: it cannot buy twice.`, "warn");
          return;
        }
        if (isSessionExpired(f)) {
          sessionExpired();
          return;
        }
        if (f.code === Code.ResourceExhausted && f.reason === "RATE_LIMITED") {
          say(describe(f), "warn");
          return;
        }
        if (f.reason.startsWith("ADMISSION_") && attempt.saleId === saleId) {
          // The pass is no good any more: back to the room's door.
          leaveQueue();
          renderQueue();
        }
        say(describe(f, () => clock.now()), "error");
        return;
      }
    }
  } finally {
    buying = false;
    renderBuyable();
  }
}

// ---- wiring ----------------------------------------------------------------------------------

ui.saleForm.addEventListener("submit", (e) => {
  e.preventDefault();
  watch(ui.saleId.value);
});
ui.tabLogin.addEventListener("click", () => setMode(false));
ui.tabRegister.addEventListener("click", () => setMode(true));
ui.authForm.addEventListener("submit", (e) => {
  e.preventDefault();
  void authenticate();
});
ui.logout.addEventListener("click", () => {
  setSession(null);
  pending = null;
  ui.orders.tBodies[0].replaceChildren();
  say("Logged out.");
});
ui.buyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  if (!session || !saleId || buying) return;
  const quantity = Math.floor(Number(ui.quantity.value));
  if (!Number.isFinite(quantity) || quantity < 1) {
    say("Quantity must be at least 1.", "error");
    return;
  }
  // A fresh key for every click: each click is a new intended purchase.
  void purchase({ key: idempotencyKey(), saleId, quantity });
});
ui.retry.addEventListener("click", () => {
  if (pending && !buying) void purchase(pending);
});
ui.join.addEventListener("click", () => void joinWaitlist());
ui.enterQueue.addEventListener("click", () => enterQueue());
ui.leave.addEventListener("click", () => void leaveWaitlist());

setInterval(() => {
  renderCountdown();
  renderQueue();
  for (const cell of ui.orders.querySelectorAll<HTMLElement>("tbody tr[data-status=HELD] td.status .state")) {
    const order = myOrders.find((o) => o.id === cell.closest("tr")?.dataset.orderId);
    if (order) cell.textContent = orderStatusText(order);
  }
}, 250);
ui.foot.textContent = `grpc-web · ${apiBaseUrl(location)}`;
setMode(false);
renderSession();
watch(new URLSearchParams(location.search).get("sale") ?? "");
