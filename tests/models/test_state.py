"""State: JSON values, versions and compare-and-set, atomic increments and their refusals."""

from __future__ import annotations

import threading

import pytest

from session_mcp.models.errors import Conflict, InvalidArgument, LimitExceeded, NotNumeric, OutOfRange
from session_mcp.models.layer import SessionLayer
from session_mcp.models.limits import Limits

INT64_MAX = 2**63 - 1


@pytest.fixture
def sid(layer: SessionLayer) -> str:
    return layer.sessions.create("s").session_id


def test_missing_key_returns_default_and_not_found(layer: SessionLayer, sid: str) -> None:
    got = layer.state.get(sid, "k", default={"d": 1})
    assert (got.found, got.value, got.version) == (False, {"d": 1}, 0)


@pytest.mark.parametrize("value", [1, -5, 2.5, 2.0, "text", True, None, [1, "a"], {"n": {"m": [1.5]}}, 2**70])
def test_values_round_trip_as_json(layer: SessionLayer, sid: str, value: object) -> None:
    layer.state.set(sid, "k", value)  # type: ignore[arg-type]
    got = layer.state.get(sid, "k")
    assert got.found and got.value == value and type(got.value) is type(value)


def test_versions_count_writes_and_compare_and_set_refuses_stale(layer: SessionLayer, sid: str) -> None:
    assert layer.state.set(sid, "k", 1).version == 1
    assert layer.state.set(sid, "k", 2, expected_version=1).version == 2
    with pytest.raises(Conflict) as caught:
        layer.state.set(sid, "k", 3, expected_version=1)
    assert "version 2" in str(caught.value)
    assert layer.state.get(sid, "k").value == 2


def test_expected_version_zero_means_create_only(layer: SessionLayer, sid: str) -> None:
    assert layer.state.set(sid, "k", "first", expected_version=0).version == 1
    with pytest.raises(Conflict):
        layer.state.set(sid, "k", "second", expected_version=0)
    assert layer.state.get(sid, "k").value == "first"


def test_increment_starts_at_default_and_returns_the_new_value(layer: SessionLayer, sid: str) -> None:
    assert layer.state.increment(sid, "n", 2, default=10).value == 12
    written = layer.state.increment(sid, "n", 5)
    assert written.value == 17 and written.version == 2 and isinstance(written.value, int)


def test_increment_keeps_ints_int_and_floats_work(layer: SessionLayer, sid: str) -> None:
    layer.state.set(sid, "i", 5)
    assert layer.state.increment(sid, "i", -7).value == -2
    assert layer.state.increment(sid, "i", 0.5).value == -1.5
    layer.state.set(sid, "f", 1.5)
    got = layer.state.increment(sid, "f", 1)
    assert got.value == 2.5 and isinstance(got.value, float)
    assert layer.state.increment(sid, "g", 1.0).value == 1.0
    assert isinstance(layer.state.get(sid, "g").value, float)


def test_increment_of_text_is_not_numeric_and_changes_nothing(layer: SessionLayer, sid: str) -> None:
    layer.state.set(sid, "s", "5")
    with pytest.raises(NotNumeric):
        layer.state.increment(sid, "s")
    layer.state.set(sid, "b", True)
    with pytest.raises(NotNumeric):
        layer.state.increment(sid, "b")
    got = layer.state.get(sid, "s")
    assert (got.value, got.version) == ("5", 1)


def test_increment_past_int64_is_out_of_range_and_changes_nothing(layer: SessionLayer, sid: str) -> None:
    layer.state.set(sid, "n", INT64_MAX - 1)
    with pytest.raises(OutOfRange):
        layer.state.increment(sid, "n", 2)
    layer.state.set(sid, "m", -(2**63) + 1)
    with pytest.raises(OutOfRange):
        layer.state.increment(sid, "m", -2)
    got = layer.state.get(sid, "n")
    assert (got.value, got.version) == (INT64_MAX - 1, 1)
    assert layer.state.increment(sid, "n", 1).value == INT64_MAX


def test_increment_refuses_nan_infinity_and_huge_arguments(layer: SessionLayer, sid: str) -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(InvalidArgument):
            layer.state.increment(sid, "n", bad)
    with pytest.raises(OutOfRange):
        layer.state.increment(sid, "n", 2**63)
    with pytest.raises(OutOfRange):
        layer.state.increment(sid, "n", 1, default=INT64_MAX)
    assert not layer.state.get(sid, "n").found


def test_float_overflow_is_out_of_range(layer: SessionLayer, sid: str) -> None:
    layer.state.set(sid, "f", 1.7e308)
    with pytest.raises(OutOfRange):
        layer.state.increment(sid, "f", 1.7e308)
    assert layer.state.get(sid, "f").value == 1.7e308


def test_float_overflow_downwards_is_out_of_range_and_whole_increments_still_add(
    layer: SessionLayer, sid: str
) -> None:
    layer.state.set(sid, "f", -1.7e308)
    with pytest.raises(OutOfRange):
        layer.state.increment(sid, "f", -1.7e308)
    assert layer.state.get(sid, "f").version == 1
    layer.state.set(sid, "g", -0.5)
    got = layer.state.increment(sid, "g", -(2**62))  # an int added to a stored float
    assert got.value == -0.5 - 2**62 and isinstance(got.value, float) and got.version == 2


def test_big_json_int_cannot_be_incremented(layer: SessionLayer, sid: str) -> None:
    layer.state.set(sid, "big", 2**70)
    with pytest.raises(OutOfRange):
        layer.state.increment(sid, "big")


def test_nan_values_and_oversized_values_are_refused(layer: SessionLayer, sid: str) -> None:
    with pytest.raises(InvalidArgument):
        layer.state.set(sid, "k", {"x": float("nan")})
    with pytest.raises(LimitExceeded):
        layer.state.set(sid, "k", "x" * 70_000)
    assert not layer.state.get(sid, "k").found


def test_key_limit_is_enforced_before_writing(layer: SessionLayer, sid: str) -> None:
    layer.state.limits = Limits(max_keys_per_session=2)
    layer.state.set(sid, "a", 1)
    layer.state.increment(sid, "b")
    with pytest.raises(LimitExceeded):
        layer.state.set(sid, "c", 1)
    with pytest.raises(LimitExceeded):
        layer.state.increment(sid, "c")
    layer.state.set(sid, "a", 2)  # existing keys can still change
    with pytest.raises(LimitExceeded):
        layer.state.save(sid, {"a": 1, "b": 2, "c": 3})
    assert layer.state.restore(sid).state == {"a": 2, "b": 1}


def test_bad_keys_are_refused(layer: SessionLayer, sid: str) -> None:
    for bad in ("", "k" * 257, "a\x00b"):
        with pytest.raises(InvalidArgument):
            layer.state.set(sid, bad, 1)


def test_save_replaces_the_whole_state_and_restore_reads_it(layer: SessionLayer, sid: str) -> None:
    layer.state.set(sid, "old", 1)
    layer.state.set(sid, "kept", 1)
    layer.state.save(sid, {"kept": 2, "new": {"a": [1]}})
    assert layer.state.restore(sid).state == {"kept": 2, "new": {"a": [1]}}
    assert layer.state.get(sid, "kept").version == 2  # versions keep counting across a save


def test_delete_says_whether_the_key_existed(layer: SessionLayer, sid: str) -> None:
    layer.state.set(sid, "k", 1)
    assert layer.state.delete(sid, "k").deleted
    assert not layer.state.delete(sid, "k").deleted


def test_state_is_per_session(layer: SessionLayer) -> None:
    layer.sessions.create("a")
    layer.sessions.create("b")
    layer.state.set("a", "k", "from a")
    assert not layer.state.get("b", "k").found
    assert layer.state.restore("b").state == {}


def test_concurrent_increments_from_threads_lose_nothing(layer: SessionLayer, sid: str) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                layer.state.increment(sid, "n")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = layer.state.get(sid, "n")
    assert got.value == 200 and got.version == 200
