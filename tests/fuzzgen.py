"""Fuzz input generation shared by the unit and integration fuzz tests (seeded, fast).

Inputs mix raw bytes, broken frames, valid frames with random topics and
payloads, mutated RFC 42 requests, and signed (``none``) and tampered signed
requests.  :data:`ALLOWED` lists the errnos a bad or unauthorised request
may get; EIO (an internal error) is never one of them.
"""

from __future__ import annotations

import errno
import json
import random
from typing import Any

from sdexec.proto.framing import encode_frame, encode_parts_stream
from sdexec.proto.message import Message, MsgFlag
from sdexec.security import sign

TOPICS = [
    "sdexec.exec",
    "sdexec.write",
    "sdexec.kill",
    "sdexec.wait",
    "sdexec.list",
    "sdexec.attach",
    "sdexec.disconnect",
    "attr.get",
    "state-machine.wait",
    "sdexec.nope",
    "",
    "x" * 300,
]
# Errnos a bad or unauthorised request may get; EIO (an internal error) is never one.
ALLOWED = {
    errno.EPROTO,
    errno.EINVAL,
    errno.EPERM,
    errno.ENOSYS,
    errno.ESRCH,
    errno.ENOENT,
    errno.EEXIST,
    errno.EACCES,
    errno.ENOTDIR,
    errno.ENOEXEC,
    errno.EBUSY,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EAGAIN,
}


def _rand_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 15, 2**31, -(2**63), 2**64, 7])
    if kind == 3:
        return rng.random() * 1e6
    if kind == 4:
        return rng.choice(["", "stdin", "true", "/bin/true", "-1", "\x00", "é", "x" * 50])
    if kind == 5:
        return rng.choice(["sdexec.exec", "sdexec.list", "base64", "UTF-8"])
    if kind == 6:
        return [_rand_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["cmd", "flags", "pid", "label", "io", "signum", "matchtag", "name", "x"]): (
            _rand_json(rng, depth + 1)
        )
        for _ in range(rng.randrange(4))
    }


TEMPLATES: dict[str, dict[str, Any]] = {
    "sdexec.exec": {
        "cmd": {"cmdline": ["true"], "env": {"PATH": "/usr/bin:/bin"}, "opts": {}, "channels": []},
        "flags": 3,
        "local_flags": 0,
    },
    "sdexec.write": {"matchtag": 1, "io": {"stream": "stdin", "rank": "0", "data": "hi"}},
    "sdexec.kill": {"pid": 1, "signum": 15},
    "sdexec.wait": {"pid": 1},
    "sdexec.list": {},
    "attr.get": {"name": "security.owner"},
}


def _mutate(rng: random.Random, obj: Any) -> Any:
    if isinstance(obj, dict) and obj and rng.random() < 0.7:
        obj = dict(obj)
        key = rng.choice(list(obj))
        action = rng.randrange(4)
        if action == 0:
            del obj[key]
        elif action == 1:
            obj[key] = _rand_json(rng)
        else:
            obj[key] = _mutate(rng, obj[key])
        return obj
    if isinstance(obj, list) and obj and rng.random() < 0.5:
        obj = list(obj)
        obj[rng.randrange(len(obj))] = _rand_json(rng)
        return obj
    return _rand_json(rng) if rng.random() < 0.3 else obj


def generate(rng: random.Random) -> tuple[str, bytes]:
    """One fuzz input: (kind, bytes on the wire)."""
    kind = rng.randrange(10)
    topic = rng.choice(TOPICS)
    flags = rng.choice([0, MsgFlag.STREAMING, MsgFlag.NORESPONSE, 0xFF])
    if kind == 0:  # raw bytes
        return "raw", rng.randbytes(rng.randrange(1, 64))
    if kind == 1:  # a valid frame with corrupted bytes
        frame = bytearray(encode_frame(Message.request("sdexec.list", {}, matchtag=1)))
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        return "corrupt", bytes(frame)
    if kind == 2:  # random parts
        parts = [rng.randbytes(rng.randrange(0, 30)) for _ in range(rng.randrange(0, 5))]
        return "parts", encode_parts_stream(parts)
    if kind == 3:  # random payload bytes
        msg = Message.request(topic, rng.randbytes(rng.randrange(0, 40)), matchtag=1, flags=flags)
        return "payload-bytes", encode_frame(msg)
    if kind in (4, 5, 6):  # mutated RFC 42 request
        t = rng.choice(list(TEMPLATES))
        body = _mutate(rng, TEMPLATES[t])
        payload = body if isinstance(body, dict) else {"x": body}
        msg = Message.request(t, payload, matchtag=rng.randrange(1, 5), flags=flags)
        return "mutated", encode_frame(msg)
    if kind == 7:  # random JSON payload
        return "json", encode_frame(
            Message.request(topic, {"v": _rand_json(rng)}, matchtag=2, flags=flags)
        )
    if kind == 8:  # signed, possibly with the wrong topic
        t = rng.choice(list(TEMPLATES))
        body = _mutate(rng, TEMPLATES[t])
        obj = dict(body) if isinstance(body, dict) else {}
        obj["topic"] = t if rng.random() < 0.8 else rng.choice(TOPICS)
        sig = sign.wrap(json.dumps(obj).encode(), sign.NONE)
        return "signed", encode_frame(Message.request(t, {"signature": sig}, matchtag=3))
    # a malformed or tampered signature
    t = rng.choice(list(TEMPLATES))
    value: Any = rng.choice(
        [
            sign.wrap(b"{}", sign.NONE)[:-2],
            sign.wrap(b'{"topic":"' + t.encode() + b'"}', sign.NONE).replace("none", "nonf"),
            _rand_json(rng),
            "a.b.c",
            "....",
        ]
    )
    return "bad-signature", encode_frame(Message.request(t, {"signature": value}, matchtag=4))
