// Turns API errors into something a buyer can read. The machine-readable cause is the
// google.rpc.ErrorInfo reason that flashsale attaches to every error status.

import { Code, ConnectError } from "@connectrpc/connect";
import { countdown } from "./format.js";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export interface Failure {
  code: Code;
  /** The ErrorInfo reason, e.g. "SOLD_OUT"; "" when the error carried none (network, proxy). */
  reason: string;
  metadata: Record<string, string>;
  /** From google.rpc.RetryInfo (or ErrorInfo metadata `retry_after_ms`) when the server sent it. */
  retryAfterMs?: number;
  violations: { field: string; description: string }[];
  /** The server's (or transport's) message, without the "[code]" prefix. */
  message: string;
}

export function failureOf(err: unknown): Failure {
  const e = ConnectError.from(err);
  const info = e.findDetails(ErrorInfoSchema)[0];
  const retry = e.findDetails(RetryInfoSchema)[0];
  const bad = e.findDetails(BadRequestSchema)[0];
  const metadata: Record<string, string> = { ...(info?.metadata ?? {}) };
  let retryAfterMs: number | undefined;
  if (retry?.retryDelay) {
    retryAfterMs = Number(retry.retryDelay.seconds) * 1000 + Math.ceil(retry.retryDelay.nanos / 1e6);
  } else if (metadata.retry_after_ms !== undefined) {
    retryAfterMs = Number(metadata.retry_after_ms);
  }
  return {
    code: e.code,
    reason: info?.reason ?? "",
    metadata,
    retryAfterMs,
    violations: (bad?.fieldViolations ?? []).map((v) => ({ field: v.field, description: v.description })),
    message: e.rawMessage,
  };
}

/** The request may or may not have reached the service: retrying with the same idempotency key is safe and needed. */
export function isTransient(f: Failure): boolean {
  if (f.reason === "BACKEND_UNAVAILABLE") return true;
  if (f.reason !== "") return false;
  return f.code === Code.Unavailable || f.code === Code.Unknown || f.code === Code.DeadlineExceeded || f.code === Code.Aborted;
}

/** A token the service no longer accepts: the buyer must log in again. */
export function isSessionExpired(f: Failure): boolean {
  return f.reason === "TOKEN_INVALID" || f.reason === "TOKEN_MISSING" || (f.code === Code.Unauthenticated && f.reason === "");
}

const endReasons: Record<string, string> = {
  SOLD_OUT: "sold out",
  TIME_UP: "its time is up",
  BY_ADMIN: "closed by the shop",
};

function seconds(ms: number): string {
  return ms < 10_000 ? `${(Math.max(ms, 100) / 1000).toFixed(1)} s` : `${Math.ceil(ms / 1000)} s`;
}

/** A sentence for the buyer. `now` formats times (SALE_NOT_STARTED, QUEUE_NOT_OPEN). */
export function describe(f: Failure, now: () => number = Date.now): string {
  const m = f.metadata;
  switch (f.reason) {
    case "SOLD_OUT":
      return "Sold out: every unit of this sale has been sold.";
    case "INSUFFICIENT_STOCK": {
      const left = m.remaining ?? "fewer";
      return `Not enough stock: only ${left} left. Lower the quantity to ${left} or less (no partial orders).`;
    }
    case "USER_LIMIT_REACHED": {
      const limit = Number(m.limit);
      const bought = Number(m.bought);
      if (Number.isFinite(limit) && Number.isFinite(bought)) {
        const more = limit - bought;
        return more > 0
          ? `Limit reached: each buyer may hold ${limit} units and you have ${bought}. You may buy ${more} more.`
          : `Limit reached: each buyer may hold ${limit} units and you already have ${bought}.`;
      }
      return "Limit reached: you already hold as many units as one buyer may.";
    }
    case "SALE_NOT_STARTED": {
      const start = Number(m.start_time_ms ?? Date.parse(m.start_time ?? ""));
      if (Number.isFinite(start)) {
        const at = new Date(start).toLocaleTimeString();
        const wait = start - now();
        return wait > 0
          ? `The sale has not started yet: it opens at ${at} (in ${wait < 60_000 ? seconds(wait) : countdown(wait)}).`
          : `The sale has not started yet: it opens at ${at}.`;
      }
      return "The sale has not started yet.";
    }
    case "SALE_ENDED": {
      const why = endReasons[m.end_reason ?? ""];
      return why ? `The sale has ended: ${why}.` : "The sale has ended.";
    }
    case "RATE_LIMITED":
      return f.retryAfterMs !== undefined
        ? `Too many attempts: wait ${seconds(f.retryAfterMs)} and try again.`
        : "Too many attempts: wait a moment and try again.";
    case "SIGN_IN_BUSY":
      return f.retryAfterMs !== undefined
        ? `Many buyers are signing in right now: try again in ${seconds(f.retryAfterMs)}.`
        : "Many buyers are signing in right now: try again in a moment.";
    case "INVALID_FIELD":
      return f.violations.length > 0
        ? f.violations.map((v) => `${v.field.replace(/_/g, " ")}: ${v.description}`).join("; ")
        : f.message;
    case "BAD_CREDENTIALS":
      return "Wrong email or password.";
    case "EMAIL_TAKEN":
      return "An account with this email exists already: log in instead.";
    case "TOKEN_INVALID":
    case "TOKEN_MISSING":
      return "Your session has expired: log in again.";
    case "SALE_NOT_FOUND":
      return "There is no sale with this id.";
    case "IDEMPOTENCY_KEY_REUSED":
      return "This purchase was already placed with other parameters; place a new one.";
    case "BACKEND_UNAVAILABLE":
      return "The service is unavailable right now.";
    case "INTERNAL_ERROR":
      return "Something went wrong on the server. Try again.";
    case "HOLD_EXPIRED":
      return "Too late: the hold expired before payment, and its units went back on sale.";
    case "ORDER_NOT_HELD": {
      const status = (m.status ?? "").toLowerCase();
      return status ? `This order is ${status}, not held: nothing to pay or cancel.` : "This order is not held any more.";
    }
    case "WAITLIST_UNAVAILABLE":
      return m.why === "UNITS_ON_SALE"
        ? `Units are on sale right now (${m.remaining ?? "some"} left): buy them instead of waiting.`
        : "This sale has no waitlist.";
    case "ROLE_NOT_ALLOWED":
      return "This account may not do that.";
    case "ADMISSION_REQUIRED":
      return "This sale has a waiting room: enter it and wait for your turn to buy.";
    case "ADMISSION_INVALID":
      return "Your turn to buy is not valid for this sale or this account: enter the waiting room again.";
    case "ADMISSION_EXPIRED": {
      const at = Date.parse(m.expired_at ?? "");
      return `Your turn to buy is over${Number.isFinite(at) ? `: it expired at ${new Date(at).toLocaleTimeString()}` : ""}. Enter the waiting room again.`;
    }
    case "QUEUE_NOT_OPEN": {
      const opens = Date.parse(m.opens_at ?? "");
      if (!Number.isFinite(opens)) return "This sale has no waiting room: buy directly.";
      const wait = opens - now();
      const at = new Date(opens).toLocaleTimeString();
      return wait > 0
        ? `The waiting room is not open yet: it opens at ${at} (in ${wait < 60_000 ? seconds(wait) : countdown(wait)}).`
        : `The waiting room is not open yet: it opens at ${at}.`;
    }
  }
  if (f.code === Code.Unavailable || f.code === Code.Unknown) return `Cannot reach the service (${f.message || "network error"}).`;
  return f.message || `Request failed (${Code[f.code]}).`;
}
