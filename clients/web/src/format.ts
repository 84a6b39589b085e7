// Clock correction and formatting.

import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { Money } from "./gen/flashsale/v1/common_pb.js";

export function millis(ts: Timestamp | undefined): number | undefined {
  return ts ? Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6) : undefined;
}

/**
 * The server's clock as seen from here: every snapshot carries `server_time`, and the offset
 * to the local clock corrects countdowns on machines whose clock is off.
 */
export class ServerClock {
  private offsetMs = 0;
  observe(serverTime: Timestamp | undefined, localNow = Date.now()): void {
    const s = millis(serverTime);
    if (s !== undefined) this.offsetMs = s - localNow;
  }
  now(): number {
    return Date.now() + this.offsetMs;
  }
  get offset(): number {
    return this.offsetMs;
  }
}

/** A rough duration: "less than a second", "about 12 s", "about 3 min", "about 2 h". */
export function about(ms: number): string {
  if (ms < 1000) return "less than a second";
  if (ms < 90_000) return `about ${Math.round(ms / 1000)} s`;
  if (ms < 90 * 60_000) return `about ${Math.round(ms / 60_000)} min`;
  return `about ${Math.round(ms / 3600_000)} h`;
}

/** "2d 03:04:05", "1:02:03", "04:05" */
export function countdown(ms: number): string {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const d = Math.floor(total / 86400);
  const h = Math.floor((total % 86400) / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const two = (n: number) => String(n).padStart(2, "0");
  if (d > 0) return `${d}d ${two(h)}:${two(m)}:${two(s)}`;
  if (h > 0) return `${h}:${two(m)}:${two(s)}`;
  return `${two(m)}:${two(s)}`;
}

export function money(m: Money | undefined, times = 1n): string {
  if (!m) return "";
  const currency = m.currency || "USD";
  let digits = 2;
  let format: Intl.NumberFormat;
  try {
    format = new Intl.NumberFormat(undefined, { style: "currency", currency });
    digits = format.resolvedOptions().maximumFractionDigits ?? 2;
  } catch {
    format = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2 });
  }
  const minor = m.amountMinor * times;
  const value = Number(minor) / 10 ** digits;
  const text = format.format(value);
  return format.resolvedOptions().style === "currency" ? text : `${text} ${currency}`;
}

/** A key for one intended purchase: 128 random bits (works outside secure contexts too). */
export function idempotencyKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
