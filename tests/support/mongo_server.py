#!/usr/bin/env python3
"""A MongoDB test server for flashsale's tests: nx-27017 (the MongoDB wire protocol over SQLite)
made safe for concurrent transactions.

As shipped, nx-27017 runs every session of a database on one SQLite connection: a second open
transaction nests inside the first, others see uncommitted writes, and a bystander's write is
rolled back by another session's abort. This launcher wraps its command handler so that:

- one transaction is open at a time per SQLite connection ("scope"). A transactional command
  from another session waits its turn, first in first out, for up to --txn-wait-ms; past that it
  fails with code 112 WriteConflict and the TransientTransactionError label, as a real replica
  set answers two transactions writing one document, so clients exercise their retry path;
- a command outside any transaction waits until the open transaction ends, so it never joins it
  (and is never rolled back by it);
- a transaction idle for --txn-idle-seconds is aborted (its client died or forgot it);
- a transaction begins at its first command, whatever that command is;
- commit of an already committed transaction answers ok (the driver retries commits), commit or
  abort of an unknown one answers code 251 NoSuchTransaction;
- every error carries a `code`; cursor ids are Int64;
- `_id` is dropped from compound index keys, which nx-27017 cannot index;
- `hello` announces a replica set when --replica-set is given, so `?replicaSet=` URIs work.

It listens on 127.0.0.1 (--port 0 picks a free port), prints `LISTENING <port>` on stdout once
it accepts connections, and exits when its standard input reaches end of file with
--exit-on-stdin-eof (so it never outlives the test process that started it).

    python tests/support/mongo_server.py --port 0 --db memory --exit-on-stdin-eof

It is a functional test server, not a benchmark target, and it cannot prove what only a real
replica set shows (see the README): serial execution hides write skew, read and write concerns
are ignored, and so on.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bson.int64 import Int64
from nx_27017 import NeoSQLiteHandler
from nx_27017.server import handle_client
from nx_27017.wire_protocol import _extract_session_id

logger = logging.getLogger("flashsale.mongo_test_server")

TRANSIENT = "TransientTransactionError"

# Commands that never touch data: answered at once, whatever transaction is open.
PASSTHROUGH = frozenset(
    {
        "hello",
        "Hello",
        "ismaster",
        "isMaster",
        "ping",
        "buildinfo",
        "buildInfo",
        "whatsmyuri",
        "getLastError",
        "getlasterror",
        "serverStatus",
        "hostInfo",
        "getParameter",
        "getCmdLineOpts",
        "saslStart",
        "saslContinue",
    }
)

CODE_NAMES = {
    8: "UnknownError",
    112: "WriteConflict",
    251: "NoSuchTransaction",
    11000: "DuplicateKey",
}


def error(code: int, message: str, *labels: str) -> dict[str, Any]:
    """A command error as a MongoDB server sends it."""
    reply: dict[str, Any] = {
        "ok": 0,
        "errmsg": message,
        "code": code,
        "codeName": CODE_NAMES.get(code, "UnknownError"),
    }
    if labels:
        reply["errorLabels"] = list(labels)
    return reply


def command_body(msg: dict[str, Any]) -> dict[str, Any]:
    for section_type, doc in msg.get("sections", []):
        if section_type == "body" and isinstance(doc, dict):
            return doc
    return {}


def strip_id_from_index_keys(body: dict[str, Any]) -> None:
    """Drops `_id` from compound index keys: nx-27017 keeps `_id` in its own column, and an
    index naming it fails every later insert ("JSON path error near '_id'"). What is left
    indexes the same documents; `_id` order comes from the table itself."""
    for spec in body.get("indexes") or []:
        key = spec.get("key") if isinstance(spec, dict) else None
        if isinstance(key, dict) and "_id" in key and len(key) > 1:
            spec["key"] = {field: order for field, order in key.items() if field != "_id"}


class Txn:
    """The open transaction of one scope."""

    def __init__(self, lsid: str, txn_number: int, db_name: str):
        self.lsid = lsid
        self.txn_number = txn_number
        self.db_name = db_name
        self.last_active = time.monotonic()
        # Commands of this transaction being executed now (never reaped while > 0).
        self.running = 0


class Scope:
    """Transaction bookkeeping for one SQLite connection."""

    def __init__(self) -> None:
        self.owner: Txn | None = None
        # Tickets of transactions waiting to begin, first come first served.
        self.queue: collections.deque[object] = collections.deque()
        # Commands outside any transaction being executed now.
        self.plain_running = 0


class GuardedHandler(NeoSQLiteHandler):
    """nx-27017's handler, with one transaction at a time per SQLite connection."""

    def __init__(self, *args: Any, txn_wait: float, txn_idle: float,
                 replica_set: str | None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.txn_wait = txn_wait
        self.txn_idle = txn_idle
        self.replica_set = replica_set
        self.address = "127.0.0.1:27017"
        # One condition guards every scope and the maps below; waits are short, commands run
        # outside it.
        self.gate = threading.Condition()
        self.scopes: dict[str, Scope] = collections.defaultdict(Scope)
        # lsid -> scope of its open transaction (commit and abort arrive on "admin").
        self.txn_scope: dict[str, str] = {}
        # lsid -> number of its last committed transaction (commit retries answer ok).
        self.committed: dict[str, int] = {}
        threading.Thread(target=self._reap_forever, name="txn-reaper", daemon=True).start()

    # -- entry points called by the connection loop ------------------------------------------

    def handle_command(self, msg: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self._guarded(super().handle_command, msg)

    def handle_insert(self, msg: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self._guarded(super().handle_insert, msg)

    # -- the guard -----------------------------------------------------------------------------

    def _guarded(self, run, msg: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request_id = msg.get("request_id", 0)
        try:
            reply = self._dispatch(run, msg)
        except Exception as exc:  # every failure becomes a coded error, never a dropped reply
            logger.exception("command failed")
            reply = (request_id, error(8, f"{type(exc).__name__}: {exc}"))
        request_id, doc = reply
        return request_id, self._fix_reply(doc)

    def _dispatch(self, run, msg: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request_id = msg.get("request_id", 0)
        body = command_body(msg)
        name = next(iter(body), "")
        if name in PASSTHROUGH:
            request_id, reply = run(msg)
            if name in ("hello", "Hello", "ismaster", "isMaster"):
                reply = self._hello(reply)
            return request_id, reply
        if name == "createIndexes":
            strip_id_from_index_keys(body)
        db_name = body.get("$db", "test")
        lsid = _extract_session_id(body["lsid"]) if body.get("lsid") else None
        if name in ("commitTransaction", "abortTransaction"):
            return request_id, self._finish(name, body, lsid)
        if name == "endSessions":
            return self._end_sessions(run, msg, body)
        if body.get("autocommit") is False and lsid:
            return self._in_transaction(run, msg, body, lsid, db_name)
        return self._outside_transaction(run, msg, lsid, db_name)

    def _scope_of(self, db_name: str) -> str:
        return self._session_scope(db_name)

    def _outside_transaction(self, run, msg, lsid: str | None, db_name: str):
        scope_name = self._scope_of(db_name)
        with self.gate:
            scope = self.scopes[scope_name]
            # (The open transaction's own session may run a command outside it, as on a real
            # server; waiting for itself would only end at the idle reaper.)
            while scope.owner is not None and scope.owner.lsid != lsid:
                self.gate.wait(0.5)
            scope.plain_running += 1
        try:
            return run(msg)
        finally:
            with self.gate:
                scope.plain_running -= 1
                self.gate.notify_all()

    def _in_transaction(self, run, msg, body, lsid: str, db_name: str):
        request_id = msg.get("request_id", 0)
        txn_number = int(body.get("txnNumber", 0))
        starting = bool(body.get("startTransaction"))
        scope_name = self._scope_of(db_name)
        with self.gate:
            scope = self.scopes[scope_name]
            owner = scope.owner
            if owner is not None and owner.lsid == lsid:
                if starting and txn_number != owner.txn_number:
                    # The client moved on to a new transaction without ending the last one.
                    self._abort_locked(scope_name, scope, "superseded")
                elif txn_number != owner.txn_number:
                    return request_id, error(251, "transaction is not open", TRANSIENT)
            if scope.owner is None or scope.owner.lsid != lsid:
                if not starting:
                    return request_id, error(
                        251, f"transaction {txn_number} is not open (aborted or expired)", TRANSIENT
                    )
                if not self._take_turn_locked(scope):
                    return request_id, error(
                        112,
                        "WriteConflict: another transaction is open (test server runs one at a time)",
                        TRANSIENT,
                    )
                scope.owner = Txn(lsid, txn_number, db_name)
                self.txn_scope[lsid] = scope_name
                # Commands outside transactions that began before this one finish first.
                while scope.plain_running > 0:
                    self.gate.wait(0.5)
            txn = scope.owner
            txn.running += 1
            txn.last_active = time.monotonic()
        try:
            if starting:
                self._begin(body, db_name)
            return run(msg)
        finally:
            with self.gate:
                txn.running -= 1
                txn.last_active = time.monotonic()

    def _take_turn_locked(self, scope: Scope) -> bool:
        """Waits (holding the gate's condition) until no transaction is open and this caller is
        first in line; false when --txn-wait-ms passes first."""
        ticket = object()
        scope.queue.append(ticket)
        deadline = time.monotonic() + self.txn_wait
        try:
            while scope.owner is not None or scope.queue[0] is not ticket:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.gate.wait(remaining)
            return True
        finally:
            scope.queue.remove(ticket)
            self.gate.notify_all()

    def _begin(self, body: dict[str, Any], db_name: str) -> None:
        """Opens the SQLite transaction now, whatever the first command is (nx-27017 begins it
        only in the commands that take a session, so a txn opened by count never began)."""
        with self._lock_for(db_name):
            db = self.get_database(db_name)
            self._get_or_create_session(
                {"lsid": body["lsid"], "startTransaction": True}, db, db_name
            )

    def _finish(self, name: str, body: dict[str, Any], lsid: str | None) -> dict[str, Any]:
        committing = name == "commitTransaction"
        txn_number = int(body.get("txnNumber", 0))
        with self.gate:
            scope_name = self.txn_scope.get(lsid) if lsid else None
            scope = self.scopes[scope_name] if scope_name is not None else None
            owner = scope.owner if scope is not None else None
            if owner is None or owner.lsid != lsid or owner.txn_number != txn_number:
                if committing and lsid and self.committed.get(lsid) == txn_number:
                    return {"ok": 1}
                return error(251, f"transaction {txn_number} is not open", TRANSIENT)
            with self._lock_for(owner.db_name):
                for session in self._tx_sessions(lsid):
                    if committing:
                        session.commit_transaction()
                    else:
                        session.abort_transaction()
            if committing:
                self.committed[lsid] = txn_number
            self._release_locked(scope, owner)
            return {"ok": 1}

    def _end_sessions(self, run, msg, body):
        ended = body.get("endSessions") or []
        with self.gate:
            for raw in ended if isinstance(ended, list) else [ended]:
                lsid = _extract_session_id(raw) if isinstance(raw, dict) else None
                scope_name = self.txn_scope.get(lsid) if lsid else None
                if scope_name is not None:
                    scope = self.scopes[scope_name]
                    if scope.owner is not None and scope.owner.lsid == lsid:
                        self._abort_locked(scope_name, scope, "session ended")
                if lsid:
                    self.committed.pop(lsid, None)
        return run(msg)

    def _abort_locked(self, scope_name: str, scope: Scope, why: str) -> None:
        owner = scope.owner
        if owner is None:
            return
        logger.info("aborting transaction %s/%s on %r: %s", owner.lsid, owner.txn_number, scope_name, why)
        with self._lock_for(owner.db_name):
            for session in self._tx_sessions(owner.lsid):
                try:
                    session.abort_transaction()
                except Exception:
                    logger.exception("abort failed")
        self._release_locked(scope, owner)

    def _release_locked(self, scope: Scope, owner: Txn) -> None:
        scope.owner = None
        self.txn_scope.pop(owner.lsid, None)
        self.gate.notify_all()

    def _reap_forever(self) -> None:
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            with self.gate:
                for scope_name, scope in list(self.scopes.items()):
                    owner = scope.owner
                    if owner is not None and owner.running == 0 and now - owner.last_active > self.txn_idle:
                        self._abort_locked(scope_name, scope, "idle")

    # -- reply fixes -----------------------------------------------------------------------------

    def _hello(self, reply: dict[str, Any]) -> dict[str, Any]:
        reply = dict(reply)
        reply.setdefault("logicalSessionTimeoutMinutes", 30)
        if self.replica_set:
            reply.update(
                {
                    "setName": self.replica_set,
                    "setVersion": 1,
                    "hosts": [self.address],
                    "primary": self.address,
                    "me": self.address,
                    "isWritablePrimary": True,
                    "ismaster": True,
                    "secondary": False,
                }
            )
        return reply

    @staticmethod
    def _fix_reply(doc: Any) -> Any:
        if not isinstance(doc, dict):
            return doc
        if doc.get("ok", 1) in (0, False) and "code" not in doc:
            doc = dict(doc)
            doc["code"] = 8
            doc.setdefault("codeName", CODE_NAMES[8])
            doc.setdefault("errmsg", "unknown error")
        cursor = doc.get("cursor")
        if isinstance(cursor, dict) and "id" in cursor and not isinstance(cursor["id"], Int64):
            cursor = dict(cursor)
            cursor["id"] = Int64(int(cursor["id"]))
            doc = dict(doc)
            doc["cursor"] = cursor
        for item in doc.get("writeErrors") or []:
            if isinstance(item, dict) and "code" not in item:
                item["code"] = 8
        return doc


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--db", default="memory",
                        help="SQLite file for data that survives restarts, or 'memory' (default)")
    parser.add_argument("--log-file", default=None, help="log here (default: stderr)")
    parser.add_argument("--pid-file", default=None, help="write the process id here")
    parser.add_argument("--replica-set", default=None, help="announce this replica set name in hello")
    parser.add_argument("--txn-wait-ms", type=int, default=250,
                        help="how long a transaction waits for its turn before WriteConflict")
    parser.add_argument("--txn-idle-seconds", type=float, default=10.0,
                        help="abort a transaction idle this long")
    parser.add_argument("--threads", type=int, default=256,
                        help="worker threads: more than the operations that may wait at once")
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="exit when standard input closes (the parent is gone)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args()


async def serve(args: argparse.Namespace, handler: GuardedHandler) -> None:
    loop = asyncio.get_running_loop()
    # Every command runs on this pool (nx-27017 uses asyncio.to_thread). Transactions waiting
    # for their turn hold a thread each, so it must exceed what may wait at once, or the open
    # transaction's commit could find no thread.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=args.threads, thread_name_prefix="cmd"))

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle_client(reader, writer, handler)

    server = await asyncio.start_server(on_client, "127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    handler.address = f"127.0.0.1:{port}"
    logger.info("listening on 127.0.0.1:%s (db %s)", port, args.db)
    print(f"LISTENING {port}", flush=True)
    async with server:
        await server.serve_forever()


def exit_on_stdin_eof() -> None:
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        logger.info("standard input closed: exiting")
        os._exit(0)


def main() -> None:
    args = parse_args()
    logging.basicConfig(
        filename=args.log_file,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # nx-27017 logs every command at INFO.
        logging.getLogger("nx_27017").setLevel(logging.WARNING)
        logging.getLogger("neosqlite").setLevel(logging.WARNING)
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    handler = GuardedHandler(
        db_path=args.db,
        txn_wait=args.txn_wait_ms / 1000.0,
        txn_idle=args.txn_idle_seconds,
        replica_set=args.replica_set,
    )
    if args.exit_on_stdin_eof:
        threading.Thread(target=exit_on_stdin_eof, name="stdin-watch", daemon=True).start()
    try:
        asyncio.run(serve(args, handler))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
