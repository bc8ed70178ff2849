"""A small ctypes binding to libmunge: ``munge_encode`` and ``munge_decode``.

Theory of operation
-------------------
MUNGE (https://dun.github.io/munge/) turns a payload into a credential that
names the uid and gid of the process that asked ``munged`` for it; any host
sharing the key can decode it and learn who made it and when.  RFC 39's
``munge`` mechanism (:mod:`sdexec.security.sign`) needs four calls, so this
module binds exactly those with :mod:`ctypes` rather than depend on a Python
binding: the one on PyPI (``pymunge``) has had no release since 2018.

Each call gets its own context (``munge_ctx_create``): libmunge contexts must
not be shared between threads, and the server decodes in a worker thread.
The daemon's socket is the context's ``MUNGE_OPT_SOCKET``; ``None`` means
libmunge's default (``/run/munge/munge.socket.2``).  ctypes releases the GIL
around every foreign call, so a decode waiting for ``munged`` never holds up
the event loop.

Errors: a missing library is ``SdexecError(ENOSYS)``; a failed encode is
``SdexecError(EPERM)`` with munged's own message.  :func:`decode` does not
raise for a bad credential; it returns the MUNGE status with what it decoded,
because RFC 39 treats EMUNGE_CRED_EXPIRED and EMUNGE_CRED_REPLAYED as
success and leaves that judgement to the caller.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import threading
from dataclasses import dataclass

from sdexec.base.errors import SdexecError

# munge_opt_t and munge_err_t values (munge.h).
OPT_ENCODE_TIME = 6
OPT_SOCKET = 8
EMUNGE_SUCCESS = 0
EMUNGE_SOCKET = 6
EMUNGE_CRED_EXPIRED = 15
EMUNGE_CRED_REPLAYED = 17

#: Decode statuses RFC 39 treats as success (TTL and replay are the caller's).
ACCEPTABLE = frozenset({EMUNGE_SUCCESS, EMUNGE_CRED_EXPIRED, EMUNGE_CRED_REPLAYED})

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None


def _load() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    global _lib, _libc
    with _lock:
        if _lib is None or _libc is None:
            name = ctypes.util.find_library("munge") or "libmunge.so.2"
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                raise SdexecError(errno.ENOSYS, "libmunge is not available") from None
            lib.munge_ctx_create.restype = ctypes.c_void_p
            lib.munge_ctx_create.argtypes = []
            lib.munge_ctx_destroy.restype = None
            lib.munge_ctx_destroy.argtypes = [ctypes.c_void_p]
            lib.munge_ctx_strerror.restype = ctypes.c_char_p
            lib.munge_ctx_strerror.argtypes = [ctypes.c_void_p]
            lib.munge_strerror.restype = ctypes.c_char_p
            lib.munge_strerror.argtypes = [ctypes.c_int]
            lib.munge_encode.restype = ctypes.c_int
            lib.munge_encode.argtypes = [
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.c_void_p,
                ctypes.c_char_p,
                ctypes.c_int,
            ]
            lib.munge_decode.restype = ctypes.c_int
            lib.munge_decode.argtypes = [
                ctypes.c_char_p,
                ctypes.c_void_p,
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.POINTER(ctypes.c_int),
                ctypes.POINTER(ctypes.c_uint32),
                ctypes.POINTER(ctypes.c_uint32),
            ]
            # munge_ctx_set/get are variadic: no argtypes, explicit ctypes arguments.
            lib.munge_ctx_set.restype = ctypes.c_int
            lib.munge_ctx_get.restype = ctypes.c_int
            libc = ctypes.CDLL(None)
            libc.free.restype = None
            libc.free.argtypes = [ctypes.c_void_p]
            _lib, _libc = lib, libc
        return _lib, _libc


def available() -> bool:
    """Whether libmunge can be loaded."""
    try:
        _load()
    except SdexecError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Decoded:
    """What :func:`decode` learned: MUNGE status, payload, creator, encode time."""

    status: int
    message: str
    payload: bytes
    uid: int
    gid: int
    encode_time: int

    @property
    def ok(self) -> bool:
        """Success in RFC 39's sense (expired and replayed included)."""
        return self.status in ACCEPTABLE


class _Context:
    def __init__(self, lib: ctypes.CDLL, socket: str | None) -> None:
        self.lib = lib
        self.ctx = lib.munge_ctx_create()
        if not self.ctx:
            raise SdexecError(errno.ENOMEM, "munge_ctx_create failed")
        if socket is not None:
            rc = lib.munge_ctx_set(
                ctypes.c_void_p(self.ctx),
                ctypes.c_int(OPT_SOCKET),
                ctypes.c_char_p(socket.encode()),
            )
            if rc != EMUNGE_SUCCESS:
                self.close()
                raise SdexecError(errno.EINVAL, f"munge: cannot use socket {socket}")

    def error(self, rc: int) -> str:
        text = self.lib.munge_ctx_strerror(self.ctx) or self.lib.munge_strerror(rc)
        return bytes(text or b"unknown MUNGE error").decode("utf-8", "replace")

    def close(self) -> None:
        if self.ctx:
            self.lib.munge_ctx_destroy(self.ctx)
            self.ctx = None


def encode(payload: bytes, socket: str | None = None) -> str:
    """A MUNGE credential carrying ``payload``, made for the calling process."""
    lib, libc = _load()
    ctx = _Context(lib, socket)
    cred = ctypes.c_void_p()
    try:
        rc = lib.munge_encode(ctypes.byref(cred), ctx.ctx, payload, len(payload))
        if rc != EMUNGE_SUCCESS:
            raise SdexecError(errno.EPERM, f"munge_encode: {ctx.error(rc)}")
        value = ctypes.string_at(cred.value) if cred.value else b""
        return value.decode("ascii")
    finally:
        if cred.value:
            libc.free(cred)
        ctx.close()


def decode(credential: str, socket: str | None = None) -> Decoded:
    """Ask ``munged`` to decode ``credential`` (see the module docstring)."""
    lib, libc = _load()
    try:
        raw = credential.encode("ascii")
    except UnicodeEncodeError:
        return Decoded(8, "credential is not ASCII", b"", -1, -1, 0)  # EMUNGE_BAD_CRED
    if b"\0" in raw:
        return Decoded(8, "credential contains NUL", b"", -1, -1, 0)
    ctx = _Context(lib, socket)
    buf = ctypes.c_void_p()
    length = ctypes.c_int(0)
    uid = ctypes.c_uint32(0xFFFFFFFF)
    gid = ctypes.c_uint32(0xFFFFFFFF)
    try:
        rc = lib.munge_decode(
            raw,
            ctx.ctx,
            ctypes.byref(buf),
            ctypes.byref(length),
            ctypes.byref(uid),
            ctypes.byref(gid),
        )
        payload = ctypes.string_at(buf.value, length.value) if buf.value else b""
        encode_time = ctypes.c_long(0)
        if rc in ACCEPTABLE:
            grc = lib.munge_ctx_get(
                ctypes.c_void_p(ctx.ctx), ctypes.c_int(OPT_ENCODE_TIME), ctypes.byref(encode_time)
            )
            if grc != EMUNGE_SUCCESS:
                return Decoded(grc, ctx.error(grc), b"", -1, -1, 0)
        message = "" if rc == EMUNGE_SUCCESS else ctx.error(rc)
        return Decoded(rc, message, payload, uid.value, gid.value, encode_time.value)
    finally:
        if buf.value:
            libc.free(buf)
        ctx.close()
