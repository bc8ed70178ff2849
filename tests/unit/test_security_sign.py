"""RFC 39 signatures with the ``none`` mechanism, and the server's request rules.

MUNGE needs a running munged; its cases are in tests/integration/test_security_signed_requests.py.
"""

from __future__ import annotations

import base64
import errno
import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdexec.base.errors import SdexecError
from sdexec.security import kv, sign
from sdexec.security.policy import RequestRules, SecurityConfig
from sdexec.security.replay import ReplayCache

UID = os.getuid()


def rules(*, owner: int | None = UID, ttl: float = 60.0, now: float = 1e9) -> RequestRules:
    cfg = SecurityConfig(server_uid=UID, owner=owner, sign_ttl=ttl)
    return RequestRules(cfg, clock=lambda: now)


def signed(topic: str, obj: dict[str, object], issued: int = 10**9) -> str:
    data = json.dumps({**obj, "topic": topic}).encode()
    return sign.wrap(data, sign.NONE, issued=issued)


def admit(r: RequestRules, topic: str, signature: str, userid: int = UID) -> dict[str, object]:
    return r.admit(topic, userid, r.verify(signature)).payload


def errno_of(fn: object, *args: object) -> int:
    with pytest.raises(SdexecError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.errno or 0


# --- the format ----------------------------------------------------------------------


def test_signature_is_three_dot_separated_parts_ending_in_none() -> None:
    parts = sign.wrap(b"hello").split(".")
    assert len(parts) == 3
    assert parts[2] == "none"
    assert base64.b64decode(parts[1]) == b"hello"


def test_header_carries_version_mechanism_and_userid_in_rfc38() -> None:
    header = kv.decode(base64.b64decode(sign.wrap(b"x").split(".")[0]))
    assert (header["version"], header["mechanism"], header["userid"]) == (1, "none", UID)


def test_unwrap_returns_signer_payload_and_issue_time() -> None:
    u = sign.unwrap(sign.wrap(b"payload", issued=1234))
    assert (u.userid, u.mechanism, u.payload, u.issued) == (UID, "none", b"payload", 1234)


def test_empty_payload_round_trips() -> None:
    assert sign.unwrap(sign.wrap(b"")).payload == b""


def test_two_signatures_of_one_payload_differ() -> None:
    assert sign.wrap(b"same") != sign.wrap(b"same")


def test_none_signature_for_another_uid_fails_verification() -> None:
    forged = sign.wrap(b"x", userid=UID + 1)
    assert errno_of(sign.unwrap, forged) == errno.EPERM


def test_none_is_refused_when_not_allowed() -> None:
    assert errno_of(lambda s: sign.unwrap(s, allowed=("munge",)), sign.wrap(b"x")) == errno.EPERM


def test_a_changed_payload_fails_verification() -> None:
    h, _, s = sign.wrap(b'{"a":1}').split(".")
    tampered = ".".join([h, base64.b64encode(b'{"a":2}').decode(), s])
    assert errno_of(sign.unwrap, tampered) == errno.EPERM


@pytest.mark.parametrize(
    "text",
    ["", "a.b", "a.b.c.d", "!!!.YQ==.none", "aGk=.YQ==.none", "a\0.b.none"],
)
def test_malformed_signature_is_eperm(text: str) -> None:
    assert errno_of(sign.unwrap, text) == errno.EPERM


@given(st.text(max_size=300))
def test_arbitrary_text_never_verifies(text: str) -> None:
    with pytest.raises(SdexecError) as info:
        sign.unwrap(text)
    assert info.value.errno == errno.EPERM


# --- the request rules, in the seed's order ------------------------------------------------


def test_unsigned_request_passes_when_signatures_are_not_required() -> None:
    assert rules().precheck("sdexec.exec", {"cmd": {}}) is None


def test_unsigned_request_is_eperm_when_owner_differs() -> None:
    r = rules(owner=UID + 1)
    assert errno_of(r.precheck, "sdexec.exec", {"cmd": {}}) == errno.EPERM


def test_unsigned_request_is_eperm_when_owner_is_unknown() -> None:
    assert errno_of(rules(owner=None).precheck, "sdexec.list", {}) == errno.EPERM


@pytest.mark.parametrize("value", [1, None, [], {"a": 1}, True])
def test_non_string_signature_is_eproto(value: object) -> None:
    assert errno_of(rules().precheck, "sdexec.exec", {"signature": value}) == errno.EPROTO


def test_signed_request_gives_the_signed_object_as_payload() -> None:
    payload = admit(rules(), "sdexec.kill", signed("sdexec.kill", {"pid": 7, "signum": 15}))
    assert payload == {"pid": 7, "signum": 15, "topic": "sdexec.kill"}


def test_topic_mismatch_is_eperm() -> None:
    r = rules()
    sig = signed("sdexec.list", {})
    assert errno_of(admit, r, "sdexec.kill", sig) == errno.EPERM


def test_missing_topic_is_eperm() -> None:
    r = rules()
    sig = sign.wrap(b'{"pid":1}', issued=10**9)
    assert errno_of(admit, r, "sdexec.kill", sig) == errno.EPERM


def test_signed_payload_that_is_not_an_object_is_eproto() -> None:
    r = rules()
    sig = sign.wrap(b"[1,2]", issued=10**9)
    assert errno_of(admit, r, "sdexec.kill", sig) == errno.EPROTO


def test_signer_other_than_the_connection_is_eperm() -> None:
    r = rules()
    assert errno_of(admit, r, "sdexec.list", signed("sdexec.list", {}), UID + 1) == errno.EPERM


def test_replayed_signature_is_eperm() -> None:
    r = rules()
    sig = signed("sdexec.list", {})
    admit(r, "sdexec.list", sig)
    assert errno_of(admit, r, "sdexec.list", sig) == errno.EPERM


def test_expired_signature_is_eperm() -> None:
    r = rules(ttl=30, now=10**9 + 31)
    assert errno_of(admit, r, "sdexec.list", signed("sdexec.list", {})) == errno.EPERM


def test_signature_within_its_ttl_is_accepted() -> None:
    r = rules(ttl=30, now=10**9 + 29)
    assert admit(r, "sdexec.list", signed("sdexec.list", {})) == {"topic": "sdexec.list"}


def test_signature_from_the_future_is_eperm() -> None:
    r = rules(now=10**9 - 60)
    assert errno_of(admit, r, "sdexec.list", signed("sdexec.list", {})) == errno.EPERM


def test_a_refused_signature_is_not_recorded_as_used() -> None:
    r = rules()
    sig = signed("sdexec.list", {})
    errno_of(admit, r, "sdexec.kill", sig)  # topic mismatch
    assert admit(r, "sdexec.list", sig) == {"topic": "sdexec.list"}


# --- the replay cache --------------------------------------------------------------------------


def test_replay_cache_forgets_expired_entries() -> None:
    cache = ReplayCache()
    cache.accept(b"a", expiry=10, now=0)
    cache.purge(now=11)
    assert len(cache) == 0


def test_full_replay_cache_refuses_with_eagain() -> None:
    cache = ReplayCache(capacity=1)
    cache.accept(b"a", expiry=10, now=0)
    with pytest.raises(SdexecError) as info:
        cache.accept(b"b", expiry=10, now=1)
    assert info.value.errno == errno.EAGAIN


def test_full_replay_cache_makes_room_from_expired_entries() -> None:
    cache = ReplayCache(capacity=1)
    cache.accept(b"a", expiry=10, now=0)
    cache.accept(b"b", expiry=30, now=20)
    assert b"b" in cache and b"a" not in cache


def test_munge_signing_without_a_daemon_is_eperm_with_mungeds_reason() -> None:
    with pytest.raises(SdexecError) as info:
        sign.wrap(b"x", sign.MUNGE, munge_socket="/nonexistent/munge.socket")
    assert info.value.errno == errno.EPERM
    assert "munge_encode" in info.value.message


def test_non_canonical_munge_credential_is_refused_before_munged_is_asked() -> None:
    p = sign.wrap(b"x").split(".")[1]
    header = base64.b64encode(kv.encode([("version", 1), ("mechanism", "munge"), ("userid", UID)]))
    text = f"{header.decode()}.{p}.MUNGE: AAAA:"
    with pytest.raises(SdexecError) as info:
        sign.unwrap(text, munge_socket="/nonexistent/munge.socket")
    assert "canonical" in info.value.message
