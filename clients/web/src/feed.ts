// A server stream that reconnects with exponential backoff (and jitter) when it drops, until
// it delivers its final message, the caller aborts, or the service answers that it never will.

import { Code } from "@connectrpc/connect";
import { failureOf, type Failure } from "./errors.js";

export type FeedState =
  | { kind: "connecting" }
  | { kind: "live" }
  | { kind: "retrying"; inMs: number; attempt: number; why: string }
  | { kind: "done" }
  | { kind: "failed"; failure: Failure };

export interface FeedOptions<T> {
  /** Opens the stream once. */
  open: (signal: AbortSignal) => AsyncIterable<T>;
  onMessage: (message: T) => void;
  onState: (state: FeedState) => void;
  /** The stream ends for good after this message (the sale ENDED). */
  isFinal: (message: T) => boolean;
  signal: AbortSignal;
  /** Other failures that another attempt cannot fix (beyond NOT_FOUND, INVALID_ARGUMENT, ...). */
  permanent?: (failure: Failure) => boolean;
  baseDelayMs?: number;
  maxDelayMs?: number;
}

/** Errors that another attempt cannot fix. */
function isPermanent(code: Code): boolean {
  return code === Code.NotFound || code === Code.InvalidArgument || code === Code.PermissionDenied || code === Code.Unimplemented;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

export async function runFeed<T>(o: FeedOptions<T>): Promise<void> {
  const base = o.baseDelayMs ?? 500;
  const max = o.maxDelayMs ?? 15_000;
  let attempt = 0;
  while (!o.signal.aborted) {
    o.onState({ kind: "connecting" });
    let why = "the stream closed";
    try {
      for await (const message of o.open(o.signal)) {
        if (o.signal.aborted) return;
        attempt = 0;
        o.onState({ kind: "live" });
        o.onMessage(message);
        if (o.isFinal(message)) {
          o.onState({ kind: "done" });
          return;
        }
      }
    } catch (err) {
      if (o.signal.aborted) return;
      const failure = failureOf(err);
      if (isPermanent(failure.code) || o.permanent?.(failure)) {
        o.onState({ kind: "failed", failure });
        return;
      }
      why = failure.message || Code[failure.code];
    }
    if (o.signal.aborted) return;
    const ceiling = Math.min(max, base * 2 ** attempt);
    const inMs = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    attempt += 1;
    o.onState({ kind: "retrying", inMs, attempt, why });
    await sleep(inMs, o.signal);
  }
}
