// End-to-end test of the browser page in headless Chromium against the real flashsale binary.
//
//   node --test test/            (from clients/web; `scripts/test` runs it after `cargo test`)
//
// Starts `target/debug/flashsale` (or $FLASHSALE_BIN) on a free loopback port with a temp data
// dir, sets up a product and an active sale through the Admin API with a node grpc-web client
// built from the same generated code as the page, and drives the page the flashsale binary
// serves itself. Artifacts (screenshots, server log) go to target/web-e2e/ (or
// $WEB_E2E_ARTIFACTS). The server is killed at the end, also when a step fails.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { createWriteStream } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { chromium } from "playwright-core";

import { AdminService } from "../src/gen/flashsale/v1/admin_pb.js";
import { AuthService } from "../src/gen/flashsale/v1/auth_pb.js";
import { PurchaseService, QueueState } from "../src/gen/flashsale/v1/purchase_pb.js";

const here = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(here, "../../..");
const BIN = process.env.FLASHSALE_BIN ?? join(ROOT, "target/debug/flashsale");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = resolve(process.env.WEB_E2E_ARTIFACTS ?? join(ROOT, "target/web-e2e"));
const SECRET = "web-e2e-secret-0123456789abcdef0123456789";
const WAIT_MS = 15_000;

// ---- the server --------------------------------------------------------------------------------

/** Every server started, so that the exit handler can kill what `after` could not. */
const servers = new Set();
process.on("exit", () => {
  for (const child of servers) child.kill("SIGKILL");
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    for (const child of servers) child.kill("SIGKILL");
    process.exit(130);
  });
}

async function startServer(dataDir, port, log) {
  const child = spawn(
    BIN,
    [
      "serve", "--host", "127.0.0.1", "--port", String(port), "--metrics-port", "0",
      "--data-dir", dataDir, "--jwt-secret", SECRET,
      "--buyer-purchases-per-sec", "0", "--ip-purchases-per-sec", "0", "--ip-logins-per-sec", "0",
    ],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info" } },
  );
  servers.add(child);
  child.once("exit", () => servers.delete(child));
  child.stderr.pipe(log, { end: false });
  const lines = createInterface({ input: child.stdout });
  const addr = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`${BIN} printed no listening line in 30 s`)), 30_000);
    child.once("error", (e) => { clearTimeout(timer); fail(e); });
    child.once("exit", (code) => { clearTimeout(timer); fail(new Error(`${BIN} exited with ${code} before listening`)); });
    lines.on("line", (line) => {
      log.write(`[stdout] ${line}\n`);
      const m = /flashsale listening grpc=(\S+)/.exec(line);
      if (m) { clearTimeout(timer); ok(m[1]); }
    });
  });
  return { child, addr };
}

async function stopServer(child, signal = "SIGTERM") {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

// ---- API clients (the same generated code as the page) ------------------------------------------

function clients(addr, token) {
  const transport = createGrpcWebTransport({
    baseUrl: `http://${addr}`,
    interceptors: token ? [(next) => (req) => { req.header.set("authorization", `Bearer ${token}`); return next(req); }] : [],
  });
  return {
    admin: createClient(AdminService, transport),
    auth: createClient(AuthService, transport),
    purchase: createClient(PurchaseService, transport),
  };
}

function httpGet(addr, path) {
  return new Promise((ok, fail) => {
    const req = http.get(`http://${addr}${path}`, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => ok({ status: res.statusCode, version: res.httpVersion, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
    });
    req.on("error", fail);
  });
}

// ---- the browser -------------------------------------------------------------------------------

async function waitText(page, selector, pattern, timeout = WAIT_MS) {
  try {
    await page.waitForFunction(
      ([sel, source, flags]) => new RegExp(source, flags).test(document.querySelector(sel)?.textContent ?? ""),
      [selector, pattern.source, pattern.flags],
      { timeout },
    );
  } catch (e) {
    const actual = await page.locator(selector).first().textContent().catch(() => "(missing)");
    throw new Error(`${selector} never matched ${pattern} within ${timeout} ms; it shows ${JSON.stringify(actual)}`, { cause: e });
  }
}

async function leaderboard(page) {
  return page.$$eval("#leaderboard tbody tr", (rows) =>
    rows.map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent.trim())),
  );
}

async function shot(page, name) {
  const path = join(ARTIFACTS, name);
  await page.screenshot({ path, fullPage: true });
  return path;
}

// ---- the test ----------------------------------------------------------------------------------

describe("flashsale web page in headless Chromium", { timeout: 300_000 }, () => {
  let tmp, dataDir, log, server, addr, adminApi, ottoApi, context, page, sale;
  const pageErrors = [];
  const bea = { email: "bea@example.com", password: "correct horse battery", name: "Bea" };

  before(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    tmp = await mkdtemp(join(tmpdir(), "flashsale-web-e2e-"));
    dataDir = join(tmp, "data");
    log = createWriteStream(join(ARTIFACTS, "server.log"));
    ({ child: server, addr } = await startServer(dataDir, 0, log));

    const adminToken = execFileSync(BIN, ["token", "--role", "admin", "--jwt-secret", SECRET], { encoding: "utf8" }).trim();
    adminApi = clients(addr, adminToken);
    const product = await adminApi.admin.createProduct({ name: "Trail sneaker", description: "web e2e", initialInventory: 100n });
    sale = await adminApi.admin.createSale({
      productId: product.id,
      allocated: 20n,
      unitPrice: { amountMinor: 1999n, currency: "USD" },
      perUserLimit: 5,
      maxPerPurchase: 3,
      endTime: timestampFromMs(Date.now() + 15 * 60_000),
    });

    const anon = clients(addr);
    await anon.auth.register({ email: bea.email, displayName: bea.name, password: bea.password });
    const otto = await anon.auth.register({ email: "otto@example.com", displayName: "Otto", password: "another password" });
    ottoApi = clients(addr, otto.accessToken);

    context = await chromium.launchPersistentContext(join(tmp, "profile"), {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 720 },
      reducedMotion: "reduce", // no bar animation half-way through in a screenshot
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on("pageerror", (e) => pageErrors.push(String(e)));
  });

  after(async () => {
    if (page && !page.isClosed()) await shot(page, "last.png").catch(() => {});
    await context?.close().catch(() => {});
    if (server) await stopServer(server);
    log?.end();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it("serves the page over HTTP/1.1 on the gRPC port, beside gRPC and grpc-web", async () => {
    const index = await httpGet(addr, "/");
    assert.equal(index.status, 200);
    assert.equal(index.version, "1.1");
    assert.match(index.headers["content-type"], /^text\/html/);
    assert.match(index.body, /<script type="module" src="app\.js\?v=[0-9a-f]+"><\/script>/);
    const js = await httpGet(addr, "/app.js");
    assert.equal(js.status, 200);
    assert.match(js.headers["content-type"], /^text\/javascript/);
    const css = await httpGet(addr, "/app.css");
    assert.match(css.headers["content-type"], /^text\/css/);
    // grpc-web still answers on the same port (the node client is grpc-web)...
    const got = await adminApi.admin.getSale({ saleId: sale.id });
    assert.equal(got.id, sale.id);
    // ...and so does plain gRPC over h2c, when grpcurl is at hand (scripts/test provides it).
    if (process.env.GRPCURL) {
      const out = execFileSync(process.env.GRPCURL, ["-plaintext", addr, "grpc.health.v1.Health/Check"], { encoding: "utf8" });
      assert.match(out, /SERVING/);
    }
  });

  it("shows the sale live: status, countdown, stock and price", async () => {
    await page.goto(`http://${addr}/?sale=${encodeURIComponent(sale.id)}`);
    assert.equal(await page.inputValue("#sale-id"), sale.id);
    await waitText(page, "#status", /^Live$/);
    await waitText(page, "#remaining", /^20$/);
    await waitText(page, "#allocated", /^20$/);
    await waitText(page, "#countdown", /^Ends in 1[45]:\d\d$/);
    await waitText(page, "#price", /19\.99/);
    await waitText(page, "#conn", /live/);
    assert.equal((await leaderboard(page)).length, 0);
  });

  it("shows another buyer's purchase without a reload", async () => {
    await page.evaluate(() => { window.__sameDocument = true; });
    const res = await ottoApi.purchase.purchase({ saleId: sale.id, quantity: 3, idempotencyKey: "otto-1" });
    assert.equal(res.order.quantity, 3);
    await waitText(page, "#remaining", /^17$/);
    await waitText(page, "#sold", /^3$/);
    await waitText(page, "#leaderboard tbody", /Otto/);
    assert.deepEqual(await leaderboard(page), [["1", "Otto", "3"]]);
    assert.equal(await page.evaluate(() => window.__sameDocument), true, "the page reloaded");
  });

  it("logs in and buys from the page, and shows the order", async () => {
    await page.fill("#email", bea.email);
    await page.fill("#password", bea.password);
    await page.click("#auth-submit");
    await waitText(page, "#who-name", /^Bea$/);
    await page.fill("#quantity", "2");
    await page.click("#buy");
    await waitText(page, "#message", /^Order confirmed: 2 units for \$39\.98/);
    await waitText(page, "#orders tbody", /\$39\.98/);
    const orders = await page.$$eval("#orders tbody tr", (rows) => rows.map((r) => r.dataset.orderId));
    assert.equal(orders.length, 1);
    await waitText(page, "#remaining", /^15$/);
    await waitText(page, "#leaderboard tbody", /Bea/);
    assert.deepEqual(await leaderboard(page), [["1", "Otto", "3"], ["2", "Bea", "2"]]);
    // The order is really the buyer's: the API agrees.
    const { accessToken } = await clients(addr).auth.login({ email: bea.email, password: bea.password });
    const mine = await clients(addr, accessToken).purchase.listMyOrders({ saleId: sale.id });
    assert.deepEqual(mine.orders.map((o) => o.id), orders);
    assert.equal(mine.orders[0].quantity, 2);
    const path = await shot(page, "page.png");
    console.log(`screenshot: ${path}`);
  });

  it("says clearly when the buyer's limit is reached", async () => {
    await page.fill("#quantity", "3");
    await page.click("#buy");
    await waitText(page, "#message", /^Order confirmed: 3 units/);
    await page.fill("#quantity", "1");
    await page.click("#buy");
    await waitText(page, "#message", /^Limit reached: each buyer may hold 5 units and you already have 5\.$/);
    assert.equal(await page.getAttribute("#message", "data-kind"), "error");
    await waitText(page, "#remaining", /^12$/);
  });

  it("reconnects its streams when the server restarts", async () => {
    const port = Number(addr.split(":").pop());
    await stopServer(server);
    await waitText(page, "#conn", /reconnecting|connecting/);
    ({ child: server, addr } = await startServer(dataDir, port, log));
    await ottoApi.purchase.purchase({ saleId: sale.id, quantity: 1, idempotencyKey: "otto-2" });
    await waitText(page, "#remaining", /^11$/, 30_000);
    await waitText(page, "#conn", /live/);
    assert.deepEqual(await leaderboard(page), [["1", "Bea", "5"], ["2", "Otto", "4"]]);
    assert.equal(await page.evaluate(() => window.__sameDocument), true, "the page reloaded");
  });

  it("switches sales from the page and shows too-little-stock and sold-out", async () => {
    const small = await adminApi.admin.createSale({
      productId: sale.productId,
      allocated: 3n,
      unitPrice: { amountMinor: 500n, currency: "USD" },
      perUserLimit: 0,
      maxPerPurchase: 5,
      endTime: timestampFromMs(Date.now() + 15 * 60_000),
    });
    await page.fill("#sale-id", small.id);
    await page.click("#sale-form button");
    await waitText(page, "#allocated", /^3$/);
    assert.equal(new URL(page.url()).searchParams.get("sale"), small.id);
    await page.fill("#quantity", "4");
    await page.click("#buy");
    await waitText(page, "#message", /^Not enough stock: only 3 left/);
    await ottoApi.purchase.purchase({ saleId: small.id, quantity: 3, idempotencyKey: "otto-3" });
    await waitText(page, "#status", /^Ended · sold out$/);
    await waitText(page, "#remaining", /^0$/);
    await waitText(page, "#buy", /^Sold out$/);
    assert.equal(await page.isDisabled("#buy"), true);
    await waitText(page, "#conn", /final/);
    await shot(page, "sold-out.png");
  });

  it("counts down to a scheduled sale and says it has not started", async () => {
    const later = await adminApi.admin.createSale({
      productId: sale.productId,
      allocated: 5n,
      unitPrice: { amountMinor: 1250n, currency: "USD" },
      perUserLimit: 2,
      maxPerPurchase: 2,
      startTime: timestampFromMs(Date.now() + 10 * 60_000),
      endTime: timestampFromMs(Date.now() + 20 * 60_000),
    });
    await page.fill("#sale-id", later.id);
    await page.click("#sale-form button");
    await waitText(page, "#status", /^Scheduled$/);
    await waitText(page, "#countdown", /^Starts in (09:[0-5]\d|10:00)$/);
    await waitText(page, "#remaining", /^5$/);
    await page.fill("#quantity", "1");
    await page.click("#buy");
    await waitText(page, "#message", /^The sale has not started yet: it opens at .+ \(in (09:[0-5]\d|10:00)\)\.$/);
    await shot(page, "scheduled.png");
  });

  it("pays or cancels a held order, and waits in line for units given back", async () => {
    const held = await adminApi.admin.createSale({
      productId: sale.productId,
      allocated: 1n,
      unitPrice: { amountMinor: 4200n, currency: "USD" },
      perUserLimit: 1,
      maxPerPurchase: 1,
      holdSeconds: 600,
      endTime: timestampFromMs(Date.now() + 15 * 60_000),
    });
    await page.fill("#sale-id", held.id);
    await page.click("#sale-form button");
    await waitText(page, "#allocated", /^1$/);
    await page.fill("#quantity", "1");
    await page.click("#buy");
    await waitText(page, "#message", /^Held for you: 1 unit for \$42\.00 .*Pay within (09:[0-5]\d|10:00)/);
    await waitText(page, "#orders tbody tr td.status .state", /^Held · pay within (09:[0-5]\d|10:00)$/);
    await waitText(page, "#held", /^1$/);
    // Otto finds nothing left and waits in line; Bea cancels: the unit becomes Otto's hold.
    await assert.rejects(ottoApi.purchase.purchase({ saleId: held.id, quantity: 1, idempotencyKey: "otto-h1" }), /sold out/i);
    const ottoPlace = await ottoApi.purchase.joinWaitlist({ saleId: held.id, quantity: 1 });
    assert.equal(ottoPlace.place.position, 1n);
    await waitText(page, "#waiting", /^1$/);
    await page.click("#orders tbody tr button.cancel");
    await waitText(page, "#message", /^Cancelled: order/);
    await waitText(page, "#orders tbody tr td.status .state", /^Cancelled$/);
    let ottos;
    for (let i = 0; i < 100 && !ottos; i++) {
      ottos = (await ottoApi.purchase.listMyOrders({ saleId: held.id })).orders.find((o) => o.status === 1);
      if (!ottos) await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(ottos, "Otto was served a hold from the line");

    // Now Bea waits in line from the page (her cancelled order no longer counts), and gets the
    // unit when Otto cancels; she pays it and the sale sells out.
    await waitText(page, "#waitlist-text", /^Sold out for now/);
    await page.click("#join");
    await waitText(page, "#waitlist-text", /^You are 1 of 1 in line for 1 unit/);
    await ottoApi.purchase.cancelOrder({ orderId: ottos.id });
    await waitText(page, "#orders tbody tr:first-child td.status .state", /^Held · pay within/);
    await page.waitForSelector("#waitlist-box", { state: "hidden", timeout: WAIT_MS }); // out of the line once served
    await shot(page, "held.png");
    await page.click("#orders tbody tr:first-child button.pay");
    await waitText(page, "#message", /^Paid: order/);
    await waitText(page, "#orders tbody tr:first-child td.status .state", /^Confirmed$/);
    await waitText(page, "#status", /^Ended · sold out$/);
    const mine = await clients(addr, (await clients(addr).auth.login({ email: bea.email, password: bea.password })).accessToken)
      .purchase.listMyOrders({ saleId: held.id });
    assert.deepEqual(mine.orders.map((o) => o.status), [3, 2], "cancelled, then confirmed");
    assert.match(mine.orders[1].paymentReference, /^test-/);
  });

  it("waits in a sale's waiting room, then buys when admitted", async () => {
    // One buyer admitted at a time: Otto's admission keeps Bea in line until he buys with it.
    const roomed = await adminApi.admin.createSale({
      productId: sale.productId,
      allocated: 3n,
      unitPrice: { amountMinor: 900n, currency: "USD" },
      perUserLimit: 2,
      maxPerPurchase: 2,
      endTime: timestampFromMs(Date.now() + 15 * 60_000),
      queue: { maxActiveBuyers: 1 },
    });
    await assert.rejects(
      ottoApi.purchase.purchase({ saleId: roomed.id, quantity: 1, idempotencyKey: "otto-q0" }),
      /this sale has a waiting room/,
    );
    let ottoPass = "";
    for await (const update of ottoApi.purchase.enterQueue({ saleId: roomed.id })) {
      if (update.state === QueueState.ADMITTED) {
        ottoPass = update.admissionPass;
        break; // closes the stream; the admission counts until he buys or it expires
      }
    }
    assert.ok(ottoPass, "Otto was admitted");

    await page.fill("#sale-id", roomed.id);
    await page.click("#sale-form button");
    await waitText(page, "#allocated", /^3$/);
    await page.waitForSelector("#room-text", { state: "visible", timeout: WAIT_MS });
    await waitText(page, "#room-admitted", /^1$/);
    await waitText(page, "#queue-text", /^This sale has a waiting room: enter it/);
    assert.equal(await page.isVisible("#buy-form"), false, "the buy form waits for the buyer's turn");
    await page.click("#enter-queue");
    await waitText(page, "#queue-text", /^You are 1 in line\.$/);
    await waitText(page, "#queue-detail", /1 waiting · 1 admitted$/);
    await waitText(page, "#room-waiting", /^1$/);
    assert.equal(await page.isVisible("#buy-form"), false);
    await shot(page, "waiting-room.png");

    // Otto buys with his pass: his admission stops counting, and Bea's turn comes.
    await ottoApi.purchase.purchase({ saleId: roomed.id, quantity: 1, idempotencyKey: "otto-q1", admissionPass: ottoPass });
    await waitText(page, "#queue-text", /^It's your turn: buy within 0[45]:[0-5]\d\.$/);
    await page.waitForSelector("#buy-form", { state: "visible", timeout: WAIT_MS });
    await shot(page, "admitted.png");
    await waitText(page, "#room-admitted", /^2$/);
    await waitText(page, "#room-waiting", /^0$/);
    await page.fill("#quantity", "2");
    await page.click("#buy");
    await waitText(page, "#message", /^Order confirmed: 2 units for \$18\.00/);
    await waitText(page, "#orders tbody", /\$18\.00/);
    // That sold it out: the room closes.
    await waitText(page, "#status", /^Ended · sold out$/);
    await waitText(page, "#queue-text", /^The sale is closed/);
    assert.equal(await page.isVisible("#enter-queue"), false);
    const mine = await clients(addr, (await clients(addr).auth.login({ email: bea.email, password: bea.password })).accessToken)
      .purchase.listMyOrders({ saleId: roomed.id });
    assert.deepEqual(mine.orders.map((o) => o.quantity), [2]);
  });

  it("says when a waiting room is not open yet", async () => {
    const later = await adminApi.admin.createSale({
      productId: sale.productId,
      allocated: 5n,
      unitPrice: { amountMinor: 300n, currency: "USD" },
      perUserLimit: 1,
      maxPerPurchase: 1,
      startTime: timestampFromMs(Date.now() + 10 * 60_000),
      endTime: timestampFromMs(Date.now() + 20 * 60_000),
      queue: { prequeueSeconds: 60, admitPerSecond: 5 },
    });
    await page.fill("#sale-id", later.id);
    await page.click("#sale-form button");
    await waitText(page, "#status", /^Scheduled$/);
    await waitText(page, "#queue-text", /^This sale has a waiting room\. It opens at .+ \(in (0[89]:[0-5]\d|09:00)\)\.$/);
    await page.click("#enter-queue");
    await waitText(page, "#message", /^The waiting room is not open yet: it opens at .+ \(in (0[89]:[0-5]\d|09:00)\)\.$/);
    assert.equal(await page.isVisible("#enter-queue"), true);
    assert.equal(await page.isVisible("#buy-form"), false);
  });

  it("draws the pre-queue at the start, then admits", async () => {
    // Starts a few seconds from now; the room opens long before. No timing is asserted: the
    // page shows the pre-queue while the sale is scheduled, then the buyer's turn after it.
    const soon = await adminApi.admin.createSale({
      productId: sale.productId,
      allocated: 5n,
      unitPrice: { amountMinor: 700n, currency: "USD" },
      perUserLimit: 2,
      maxPerPurchase: 2,
      startTime: timestampFromMs(Date.now() + 8_000),
      endTime: timestampFromMs(Date.now() + 15 * 60_000),
      queue: { prequeueSeconds: 600, admitPerSecond: 5 },
    });
    await page.fill("#sale-id", soon.id);
    await page.click("#sale-form button");
    await waitText(page, "#status", /^Scheduled$/);
    await page.click("#enter-queue");
    await waitText(page, "#queue-text", /^You are in the waiting room\. The order of the line is drawn at random when the sale starts at .+ \(in 00:0\d\)\.$/);
    await waitText(page, "#room-waiting", /^1$/);
    await shot(page, "prequeue.png");
    await waitText(page, "#queue-text", /^It's your turn: buy within/, 30_000);
    await waitText(page, "#status", /^Live$/);
    await page.fill("#quantity", "1");
    await page.click("#buy");
    await waitText(page, "#message", /^Order confirmed: 1 unit for \$7\.00/);
    await waitText(page, "#orders tbody", /\$7\.00/);
  });

  it("says when the admission expired, and enters again", async () => {
    const brief = await adminApi.admin.createSale({
      productId: sale.productId,
      allocated: 5n,
      unitPrice: { amountMinor: 100n, currency: "USD" },
      perUserLimit: 1,
      maxPerPurchase: 1,
      endTime: timestampFromMs(Date.now() + 15 * 60_000),
      queue: { admitPerSecond: 5, admissionSeconds: 1 },
    });
    await page.fill("#sale-id", brief.id);
    await page.click("#sale-form button");
    await waitText(page, "#status", /^Live$/);
    await page.click("#enter-queue");
    await waitText(page, "#queue-text", /^Your turn to buy expired\./, 30_000);
    await waitText(page, "#enter-queue", /^Enter again$/);
    assert.equal(await page.isVisible("#buy-form"), false);
    await page.click("#enter-queue");
    // A new place at the back, admitted again (and soon expired again).
    await waitText(page, "#room-admitted", /^2$/, 30_000);
  });

  it("raised no error in the page", () => {
    assert.deepEqual(pageErrors, []);
  });
});
