"""Session state: a versioned key/value store with compare-and-set and atomic numeric increments."""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from pydantic import JsonValue
from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from session_mcp.models.clock import Clock, to_db
from session_mcp.models.database import Database, DriverStatement
from session_mcp.models.errors import Conflict, InvalidArgument, LimitExceeded, NotNumeric, OutOfRange
from session_mcp.models.limits import Limits
from session_mcp.models.schemas import StateDeleted, StateSnapshot, StateValue, StateWritten
from session_mcp.models.sessions import Sessions, encode_json
from session_mcp.models.tables import StateRow

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
FLOAT_MAX = 1.7976931348623157e308
_T = StateRow.__table__  # type: ignore[attr-defined]
_VALUE = ("kind", "num_int", "num_real", "value_json")


# Increments: SQL adds to the stored number. The bounds are checked in WHERE against limits
# computed in Python (`_bounds`), so the database never evaluates an overflowing sum (SQLite
# would silently turn it into a float, PostgreSQL would raise).
_N_INT = bindparam("n_int", type_=BigInteger)
_N_REAL = bindparam("n_real", type_=Float)
_REAL_ROOM = _T.c.num_real.between(bindparam("real_lo", type_=Float), bindparam("real_hi", type_=Float))
_ADD_INT_OK = and_(
    _T.c.kind == "int",
    _T.c.num_int.between(bindparam("int_lo", type_=BigInteger), bindparam("int_hi", type_=BigInteger)),
) | and_(_T.c.kind == "real", _REAL_ROOM)
_ADD_INT = {
    "num_int": case((_T.c.kind == "int", _T.c.num_int + _N_INT), else_=None),
    "num_real": case((_T.c.kind == "real", _T.c.num_real + _N_REAL), else_=None),
}
_AS_REAL = case((_T.c.kind == "int", _T.c.num_int * literal(1.0)), else_=_T.c.num_real)
_ADD_REAL_OK = and_(
    or_(
        _T.c.kind == "int", _T.c.kind == "real"
    ),  # not in_(): an expanding list, which DriverStatement cannot send
    _AS_REAL.between(bindparam("real_lo", type_=Float), bindparam("real_hi", type_=Float)),
)
_ADD_REAL = {"kind": literal("real"), "num_int": None, "num_real": _AS_REAL + _N_REAL}
# On the driver's cursor (DriverStatement), as the upserts below: state_get, state_set and
# state_increment run them.
_ROW = DriverStatement(select(_T).where(_T.c.session_id == bindparam("sid"), _T.c.key == bindparam("k")))
_KEYS = DriverStatement(select(func.count()).where(_T.c.session_id == bindparam("sid")))
_ALL = select(_T).where(_T.c.session_id == bindparam("sid")).order_by(_T.c.key)
_DELETE = delete(_T).where(_T.c.session_id == bindparam("sid"), _T.c.key == bindparam("k"))
_COMPARE_AND_SET = (
    update(_T)
    .where(
        _T.c.session_id == bindparam("sid"), _T.c.key == bindparam("k"), _T.c.version == bindparam("expected")
    )
    .values(version=_T.c.version + 1)
    .returning(_T.c.version)
)


def _upserts() -> dict[str, dict[str, Any]]:
    """The writes of every state tool, built once per dialect (see sessions.py for why). Inserts take
    their row as column-named parameters; WHERE parameters never use a column's name."""
    by_dialect: dict[str, dict[str, Any]] = {}
    for name, insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert)):
        keys = [_T.c.session_id, _T.c.key]
        new = insert(_T)
        bump = {"version": _T.c.version + 1, "updated_at": new.excluded.updated_at}
        save = new.on_conflict_do_update(
            index_elements=keys, set_={**{c: new.excluded[c] for c in _VALUE}, **bump}
        )
        one = [c.name for c in keys] + [*_VALUE, "version", "updated_at"]  # a row's columns
        by_dialect[name] = {
            "set": DriverStatement(save.returning(_T.c.version), one),
            "save": save,  # executemany (conn.execute): no RETURNING
            "create": DriverStatement(
                new.on_conflict_do_nothing(index_elements=keys).returning(_T.c.version), one
            ),
            "add_int": DriverStatement(
                new.on_conflict_do_update(
                    index_elements=keys, set_={**_ADD_INT, **bump}, where=_ADD_INT_OK
                ).returning(_T.c.kind, _T.c.num_int, _T.c.num_real, _T.c.version),
                one,
            ),
            "add_real": DriverStatement(
                new.on_conflict_do_update(
                    index_elements=keys, set_={**_ADD_REAL, **bump}, where=_ADD_REAL_OK
                ).returning(_T.c.kind, _T.c.num_int, _T.c.num_real, _T.c.version),
                one,
            ),
        }
    return by_dialect


_UPSERTS = _upserts()


def _bounds(n: int | float) -> dict[str, Any]:
    """Where a stored number may be for `+ n` to stay in range, as the increment's parameters."""
    params: dict[str, Any] = {
        "n_real": float(n),
        "real_lo": -FLOAT_MAX - min(n, 0),
        "real_hi": FLOAT_MAX - max(n, 0),
    }
    if isinstance(n, int):
        params.update(n_int=n, int_lo=INT64_MIN - min(n, 0), int_hi=INT64_MAX - max(n, 0))
    return params


def _columns(value: JsonValue, max_bytes: int) -> dict[str, Any]:
    """Numbers go to typed columns (so SQL can add to them); everything else is stored as JSON."""
    encoded = encode_json(value, "value", max_bytes)
    if isinstance(value, bool) or value is None or not isinstance(value, int | float):
        return {"kind": "json", "num_int": None, "num_real": None, "value_json": encoded}
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return {"kind": "int", "num_int": value, "num_real": None, "value_json": None}
        return {"kind": "json", "num_int": None, "num_real": None, "value_json": encoded}
    return {"kind": "real", "num_int": None, "num_real": value, "value_json": None}


def value_of(row: Any) -> JsonValue:
    """A state row's value as the JSON it was stored as."""
    if row["kind"] == "int":
        return int(row["num_int"])
    if row["kind"] == "real":
        return float(row["num_real"])
    loaded: JsonValue = json.loads(row["value_json"])
    return loaded


def check_key(key: str) -> str:
    if not key or len(key) > 256 or "\x00" in key:
        raise InvalidArgument("state key must be 1-256 characters with no NUL; pick a shorter key")
    return key


class State:
    def __init__(self, db: Database, sessions: Sessions, clock: Clock, limits: Limits) -> None:
        self.db = db
        self.sessions = sessions
        self.clock = clock
        self.limits = limits

    def _upsert(self, name: str) -> Any:
        return _UPSERTS[self.db.dialect][name]

    def get(
        self, session_id: str, key: str, default: JsonValue = None, *, owner: str | None = None
    ) -> StateValue:
        check_key(key)
        with self.db.read() as conn:
            self.sessions.local(conn, session_id, owner)
            row = self._row(conn, session_id, key)
        if row is None:
            return StateValue(key=key, value=default, found=False, version=0)
        return StateValue(key=key, value=value_of(row), found=True, version=row["version"])

    def restore(self, session_id: str, *, owner: str | None = None) -> StateSnapshot:
        with self.db.read() as conn:
            self.sessions.local(conn, session_id, owner)
            rows = conn.execute(_ALL, {"sid": session_id}).mappings()
            return StateSnapshot(state={r["key"]: value_of(r) for r in rows})

    def set(
        self,
        session_id: str,
        key: str,
        value: JsonValue,
        expected_version: int | None = None,
        *,
        owner: str | None = None,
    ) -> StateWritten:
        check_key(key)
        cols = _columns(value, self.limits.max_value_bytes)
        now = to_db(self.clock.now())
        with self.db.write() as conn:
            self.sessions.writable(conn, session_id, owner)
            if expected_version is None or expected_version == 0:
                self._check_key_room(conn, session_id, key)
                stmt = self._upsert("set" if expected_version is None else "create")
                row = {"session_id": session_id, "key": key, "version": 1, "updated_at": now, **cols}
                written = next(iter(stmt.run(conn, row)), None)
            else:
                where = {"sid": session_id, "k": key, "expected": expected_version}
                written = conn.execute(_COMPARE_AND_SET, {**where, **cols, "updated_at": now}).first()
            if written is None:
                current = self._row(conn, session_id, key)
                version = 0 if current is None else current["version"]
                raise Conflict(
                    f"state key '{key}' is at version {version}, not {expected_version}; "
                    "read it again with state_get and retry with the version you saw"
                )
        return StateWritten(key=key, value=value, version=written[0])

    def increment(
        self,
        session_id: str,
        key: str,
        increment: int | float = 1,
        default: int | float = 0,
        *,
        owner: str | None = None,
    ) -> StateWritten:
        check_key(key)
        for name, number in (("increment", increment), ("default", default)):
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise InvalidArgument(f"{name} must be a number")
            if isinstance(number, float) and not math.isfinite(number):
                raise InvalidArgument(f"{name} must be finite; NaN and infinities are refused")
            if isinstance(number, int) and not INT64_MIN <= number <= INT64_MAX:
                raise OutOfRange(f"{name}={number} is outside signed 64-bit; use a smaller number")
        as_real = isinstance(increment, float) or isinstance(default, float)
        start = default + increment
        if as_real:
            if not math.isfinite(start) or abs(start) > FLOAT_MAX:
                raise OutOfRange(f"{default} + {increment} is not a finite number")
            initial: dict[str, Any] = {"kind": "real", "num_int": None, "num_real": float(start)}
        else:
            if not INT64_MIN <= start <= INT64_MAX:
                raise OutOfRange(f"{default} + {increment} is outside signed 64-bit; use smaller numbers")
            initial = {"kind": "int", "num_int": start, "num_real": None}
        now = to_db(self.clock.now())
        stmt = self._upsert("add_real" if isinstance(increment, float) else "add_int")
        params = {
            "session_id": session_id,
            "key": key,
            "version": 1,
            "updated_at": now,
            "value_json": None,
            **initial,
            **_bounds(increment),
        }
        with self.db.write() as conn:
            self.sessions.writable(conn, session_id, owner)
            self._check_key_room(conn, session_id, key)
            row = stmt.first(conn, params)
            if row is None:
                self._explain_refusal(conn, session_id, key, increment)
        return StateWritten(key=key, value=value_of(row), version=row["version"])

    def _explain_refusal(self, conn: Connection, session_id: str, key: str, n: int | float) -> NoReturn:
        row = self._row(conn, session_id, key)
        assert row is not None
        current = value_of(row)
        if row["kind"] in ("int", "real") or (
            isinstance(current, int | float) and not isinstance(current, bool)
        ):
            raise OutOfRange(
                f"state key '{key}' holds {current}; adding {n} leaves signed 64-bit (or finite float) range. "
                "Nothing was changed"
            )
        raise NotNumeric(
            f"state key '{key}' holds {json.dumps(current)[:80]}, not a number; "
            "use state_set to replace it with a number first. Nothing was changed"
        )

    def delete(self, session_id: str, key: str, *, owner: str | None = None) -> StateDeleted:
        check_key(key)
        with self.db.write() as conn:
            self.sessions.writable(conn, session_id, owner)
            result = conn.execute(_DELETE, {"sid": session_id, "k": key})
        return StateDeleted(key=key, deleted=result.rowcount > 0)

    def save(
        self, session_id: str, state: dict[str, JsonValue], *, owner: str | None = None
    ) -> StateSnapshot:
        """Replace the whole state at once; keys that stay keep counting their versions."""
        if len(state) > self.limits.max_keys_per_session:
            raise LimitExceeded(
                f"state has {len(state)} keys, over the limit of {self.limits.max_keys_per_session} per session"
            )
        columns = {check_key(k): _columns(v, self.limits.max_value_bytes) for k, v in state.items()}
        now = to_db(self.clock.now())
        with self.db.write() as conn:
            self.sessions.writable(conn, session_id, owner)
            conn.execute(delete(_T).where(_T.c.session_id == session_id, _T.c.key.not_in(list(columns))))
            rows = [
                {"session_id": session_id, "key": key, "version": 1, "updated_at": now, **cols}
                for key, cols in columns.items()
            ]
            if rows:  # one executemany of the prebuilt upsert
                conn.execute(self._upsert("save"), rows)
        return StateSnapshot(state=state)

    def _row(self, conn: Connection, session_id: str, key: str) -> Any:
        return _ROW.first(conn, {"sid": session_id, "k": key})

    def _check_key_room(self, conn: Connection, session_id: str, key: str) -> None:
        if self._row(conn, session_id, key) is not None:
            return
        ((count,),) = _KEYS.run(conn, {"sid": session_id})
        if count >= self.limits.max_keys_per_session:
            raise LimitExceeded(
                f"session '{session_id}' already has {count} state keys, the limit; "
                "delete keys with state_delete or reuse existing ones"
            )
