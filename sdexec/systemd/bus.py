"""The one module that talks to systemd over D-Bus (dbus-fast).

Theory of operation
-------------------
One :class:`SystemdBus` owns one connection to the manager's bus, opened with
``negotiate_unix_fd=True`` (otherwise fds are silently dropped and systemd
answers "Bad message").  At connect time it calls ``Manager.Subscribe()``
once (no unit signals are emitted without it) and adds a match rule for the
manager's ``JobRemoved``.

Unit signals (``PropertiesChanged``) come through one match rule per watched
unit, on its object path: a manager runs many units that are not this
server's (the units of the other Flux brokers of a node, the targets and
slices whose dependencies change with every unit), and each of their
signals would otherwise be read and decoded here only to be dropped (with
four brokers on one manager that was three quarters of the signals each
server decoded, and the largest part of its CPU per job).  The rule is
added by :meth:`SystemdBus.watch`, which is called before the unit's
``StartTransientUnit``; the ``AddMatch`` is sent at once, without waiting
for its reply: the bus daemon handles one connection's messages in order,
so the rule is in force before the manager even sees the start, and the
exec path pays no round trip.  Its reply is checked when it comes (see
below); :meth:`unwatch` removes the rule (``NO_REPLY_EXPECTED``).

dbus-daemon limits the match rules of one connection (512 on a system bus),
and a thousand units may start at once: beyond :data:`UNIT_MATCHES_MAX`
watched units, one broad rule for every object under
``/org/freedesktop/systemd1/unit`` is added instead (sent, like the others,
before the next start), and the units' own rules are dropped again once no
more than :data:`UNIT_MATCHES_LOW` are watched (their rules first, then the
broad one's removal: no signal falls between).  The daemon sends a signal
once to a connection however many of its rules match.  Should the daemon
refuse a rule all the same (a limit set lower than ours), signals may have
been missed: the connection is given up as lost (:meth:`lose`), as when the
bus daemon dies, so that the server reconnects and reads every unit's state
again, and this connection uses the broad rule from then on.

Signals are dispatched to the :class:`UnitListener` registered for the
unit's object path (or unit name, for ``JobRemoved``).  Signals of units
nobody watches (still in flight after an unwatch) are dropped after a
dictionary lookup and counted (:attr:`SystemdBus.unrouted`).

At most MAX_IN_FLIGHT calls are outstanding on the connection at once.
dbus-fast (5.2) treats a send that meets a full socket buffer (EAGAIN) as a
fatal error and drops the whole connection, failing every pending call with
EBADF; a thousand concurrent StartTransientUnit calls did exactly that.  A
window of 32 keeps what is queued far below the socket buffer while still
keeping systemd, which handles calls one at a time, busy.

D-Bus errors are translated to errnos here, once, from a table.

Losing the manager: a third match follows ``NameOwnerChanged`` for
``org.freedesktop.systemd1``, so the moment the manager leaves the bus (it
died, or it is re-executing) is known at once, as is the moment the bus
connection itself closes (its dbus-daemon died).  Either way
:meth:`SystemdBus.lose` records why (:attr:`SystemdBus.down`), closes the
connection so that every call in flight fails at once with that errno and
reason, and wakes :meth:`SystemdBus.wait_lost`; until :meth:`reconnect`
succeeds, new calls fail at once the same way.  Every call is sent with
``NO_AUTO_START``: a bus whose manager is gone answers "no owner" at once,
where an auto-started call would wait two minutes for an activation that
cannot happen.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Sequence
from typing import Any, Protocol

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from sdexec.base.errors import SdexecError, errnum_of
from sdexec.systemd.dbusstrings import sendable
from sdexec.systemd.properties import unit_object_path

SYSTEMD = "org.freedesktop.systemd1"
DBUS_NAME = "org.freedesktop.DBus"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"
MAX_IN_FLIGHT = 32
#: At most this many watched units have a match rule of their own; beyond, one rule for all.
UNIT_MATCHES_MAX = 256
#: With one rule for all units, back to a rule per unit once no more than this many are watched.
UNIT_MATCHES_LOW = 128
UNITS_RULE = (
    f"type='signal',sender='{SYSTEMD}',interface='{PROPS_IFACE}',"
    f"member='PropertiesChanged',path_namespace='{MANAGER_PATH}/unit'"
)

DBUS_ERRNO: dict[str, int] = {
    "org.freedesktop.systemd1.NoSuchUnit": errno.ESRCH,
    "org.freedesktop.systemd1.NoSuchProcess": errno.ESRCH,
    "org.freedesktop.systemd1.UnitExists": errno.EEXIST,
    "org.freedesktop.systemd1.JobTypeNotApplicable": errno.EINVAL,
    "org.freedesktop.systemd1.TransactionIsDestructive": errno.EBUSY,
    "org.freedesktop.systemd1.UnitMasked": errno.EPERM,
    "org.freedesktop.DBus.Error.InvalidArgs": errno.EINVAL,
    "org.freedesktop.DBus.Error.PropertyReadOnly": errno.EINVAL,
    "org.freedesktop.DBus.Error.UnknownProperty": errno.EINVAL,
    "org.freedesktop.DBus.Error.NotSupported": errno.EOPNOTSUPP,
    "org.freedesktop.DBus.Error.AccessDenied": errno.EPERM,
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": errno.EPERM,
    "org.freedesktop.DBus.Error.NoReply": errno.ETIMEDOUT,
    "org.freedesktop.DBus.Error.Timeout": errno.ETIMEDOUT,
    "org.freedesktop.DBus.Error.NoMemory": errno.ENOMEM,
    "org.freedesktop.DBus.Error.LimitsExceeded": errno.EAGAIN,
    "org.freedesktop.DBus.Error.ServiceUnknown": errno.ECONNREFUSED,
    "org.freedesktop.DBus.Error.NameHasNoOwner": errno.EHOSTDOWN,
    "org.freedesktop.DBus.Error.Disconnected": errno.ECONNRESET,
}


def translate(exc: Exception) -> SdexecError:
    """A D-Bus (or connection) failure as an errno-carrying error."""
    if isinstance(exc, SdexecError):
        return exc
    if isinstance(exc, DBusError):
        return SdexecError(DBUS_ERRNO.get(exc.type, errno.EIO), exc.text or exc.type)
    if isinstance(exc, OSError) and exc.errno:
        return SdexecError(exc.errno, f"systemd bus: {exc.strerror}")
    return SdexecError(errno.EIO, f"systemd bus: {exc}")


class UnitListener(Protocol):
    """What a watched unit's owner receives (values already unwrapped)."""

    def service_changed(self, props: dict[str, Any]) -> None: ...
    def unit_changed(self, props: dict[str, Any]) -> None: ...
    def job_removed(self, result: str) -> None: ...


def _unwrap(props: dict[str, Variant]) -> dict[str, Any]:
    return {k: v.value for k, v in props.items()}


def unit_rule(path: str) -> str:
    """The match rule for one unit's ``PropertiesChanged`` (its object path)."""
    return (
        f"type='signal',sender='{SYSTEMD}',interface='{PROPS_IFACE}',"
        f"member='PropertiesChanged',path='{path}'"
    )


def _written(fut: asyncio.Future[None]) -> None:
    """A pipelined match call was written (or the connection failed, noticed elsewhere)."""
    if not fut.cancelled():
        fut.exception()


class SystemdBus:
    """A connection to one systemd manager (user, system or private)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        system: bool = False,
        unit_matches: int = UNIT_MATCHES_MAX,
        unit_matches_low: int = UNIT_MATCHES_LOW,
    ) -> None:
        self.address = address
        self.system = system
        self._bus: MessageBus | None = None
        self._by_path: dict[str, UnitListener] = {}
        self._by_name: dict[str, UnitListener] = {}
        self._path_of: dict[str, str] = {}  # unit name -> object path, while watched
        #: Most units with a rule of their own (0: one rule for all, always).
        self.unit_matches = unit_matches
        self.unit_matches_low = min(unit_matches_low, unit_matches)
        #: Object paths that have a rule of their own on this connection.
        self.matched: set[str] = set()
        #: Whether the rule for every unit is in force (beyond ``unit_matches``).
        self.broad = False
        self._match_calls: dict[int, str] = {}  # serial of a pipelined AddMatch -> its rule
        #: Unit signals that reached no listener (in flight after an unwatch).
        self.unrouted = 0
        self._window = asyncio.Semaphore(MAX_IN_FLIGHT)
        #: Why the manager cannot be reached now (None while it can).
        self.down: SdexecError | None = None
        self._lost = asyncio.Event()
        #: The manager's pid, as the bus daemon knows it (0 if it could not say).
        self.manager_pid = 0

    # --- connection --------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, add the match rules and subscribe (EHOSTDOWN if no manager is there)."""
        try:
            if self.address:
                bus = MessageBus(bus_address=self.address, negotiate_unix_fd=True)
            else:
                kind = BusType.SYSTEM if self.system else BusType.SESSION
                bus = MessageBus(bus_type=kind, negotiate_unix_fd=True)
            self._bus = await bus.connect()
        except Exception as exc:
            raise translate(exc) from exc
        self._bus.add_message_handler(self._on_message)
        self.matched.clear()
        self._match_calls.clear()
        # The units watched already (a reconnect, or watched while the bus was down).
        self.broad = self.unit_matches <= 0 or len(self._by_path) > self.unit_matches_low
        if self.broad:
            await self._add_match(UNITS_RULE)
        else:
            for path in list(self._by_path):
                self.matched.add(path)
                await self._add_match(unit_rule(path))
        await self._add_match(
            f"type='signal',sender='{SYSTEMD}',interface='{MANAGER_IFACE}',member='JobRemoved'"
        )
        await self._add_match(
            f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_NAME}',"
            f"member='NameOwnerChanged',arg0='{SYSTEMD}'"
        )
        await self._manager("Subscribe", connecting=True)
        self.manager_pid = await self._owner_pid()
        self.down = None
        self._lost.clear()
        for path in list(self._by_path):  # watched while this connection was being made
            if not self.broad and path not in self.matched:
                self.matched.add(path)
                self._send_match("AddMatch", unit_rule(path))

    async def reconnect(self) -> None:
        """A new connection in place of a lost one (the listeners stay registered)."""
        self.close()
        try:
            await self.connect()
        except BaseException:
            self.close()
            raise

    def lose(self, why: SdexecError) -> None:
        """The manager (or its bus) is gone: fail what is in flight, refuse what comes."""
        if self.down is not None:
            return
        self.down = why
        self._lost.set()
        if self._bus is not None:
            self._bus.disconnect()

    async def wait_closed(self) -> None:
        """Return when the bus connection is gone."""
        assert self._bus is not None
        await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def wait_lost(self) -> SdexecError:
        """Return, with the reason, once the manager or the bus connection is lost."""
        assert self._bus is not None
        closed = asyncio.ensure_future(self._bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({closed, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (closed, lost):
                task.cancel()
            await asyncio.gather(closed, lost, return_exceptions=True)
        self.lose(SdexecError(errno.ECONNRESET, "lost the connection to the systemd bus"))
        assert self.down is not None
        return self.down

    def _down_error(self) -> SdexecError:
        assert self.down is not None
        return SdexecError(errnum_of(self.down), self.down.message)

    def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.connected

    # --- calls -----------------------------------------------------------------------

    async def _call(self, msg: Message, *, connecting: bool = False) -> Message:
        if self.down is not None and not connecting:
            raise self._down_error()
        if self._bus is None:
            raise SdexecError(errno.ECONNRESET, "not connected to systemd")
        try:
            async with self._window:
                reply = await self._bus.call(msg)
        except Exception as exc:
            if self.down is not None and not connecting:  # lost while in flight
                raise self._down_error() from exc
            raise translate(exc) from exc
        if reply.message_type == MessageType.ERROR:
            if self.down is not None and not connecting:
                raise self._down_error()
            name = reply.error_name or ""
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else name
            raise SdexecError(DBUS_ERRNO.get(name, errno.EIO), text)
        return reply

    async def _manager(
        self,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        fds: Sequence[int] = (),
        *,
        connecting: bool = False,
    ) -> list[Any]:
        reply = await self._call(
            Message(
                destination=SYSTEMD,
                path=MANAGER_PATH,
                interface=MANAGER_IFACE,
                member=member,
                signature=signature,
                body=sendable(list(body)),
                unix_fds=list(fds),
                flags=MessageFlag.NO_AUTOSTART,
            ),
            connecting=connecting,
        )
        return list(reply.body)

    async def _add_match(self, rule: str) -> None:
        await self._call(
            Message(
                destination=DBUS_NAME,
                path="/org/freedesktop/DBus",
                interface=DBUS_NAME,
                member="AddMatch",
                signature="s",
                body=[rule],
            ),
            connecting=True,
        )

    async def _owner_pid(self) -> int:
        try:
            reply = await self._call(
                Message(
                    destination=DBUS_NAME,
                    path="/org/freedesktop/DBus",
                    interface=DBUS_NAME,
                    member="GetConnectionUnixProcessID",
                    signature="s",
                    body=[SYSTEMD],
                ),
                connecting=True,
            )
        except OSError:
            return 0
        return int(reply.body[0])

    # --- units -------------------------------------------------------------------------

    def watch(self, unit: str, listener: UnitListener) -> None:
        """Route this unit's signals to ``listener`` (call before starting it).

        Its match rule is sent now, ahead of any call that follows (see the
        module's notes): nothing to wait for.
        """
        path = self._path_of.get(unit) or unit_object_path(unit)
        self._path_of[unit] = path
        self._by_path[path] = listener
        self._by_name[unit] = listener
        if self.broad or path in self.matched or not self._can_send():
            return  # the broad rule covers it; or connect() adds the rules
        if len(self.matched) >= self.unit_matches:
            self._send_match("AddMatch", UNITS_RULE)
            self.broad = True
            return
        self._send_match("AddMatch", unit_rule(path))
        self.matched.add(path)

    def unwatch(self, unit: str, listener: UnitListener | None = None) -> None:
        """Stop routing this unit's signals (only if to ``listener``, when given)."""
        if listener is not None and self._by_name.get(unit) is not listener:
            return
        path = self._path_of.pop(unit, None)
        self._by_name.pop(unit, None)
        if path is None:
            return
        self._by_path.pop(path, None)
        if path in self.matched:
            self.matched.discard(path)
            if self._can_send():
                self._send_match("RemoveMatch", unit_rule(path))
        if self.broad and len(self._by_path) <= self.unit_matches_low and self._can_send():
            self._narrow()

    def _narrow(self) -> None:
        """A rule for each watched unit again, then the broad rule removed (in that order)."""
        for path in self._by_path:
            if path not in self.matched:
                self._send_match("AddMatch", unit_rule(path))
                self.matched.add(path)
        self._send_match("RemoveMatch", UNITS_RULE)
        self.broad = False

    def _can_send(self) -> bool:
        return self._bus is not None and self.down is None and self.unit_matches > 0

    def _send_match(self, member: str, rule: str) -> None:
        """Send AddMatch/RemoveMatch now, without waiting: the reply of an AddMatch is
        checked in :meth:`_on_message`; a RemoveMatch asks for none."""
        assert self._bus is not None
        remove = member == "RemoveMatch"
        msg = Message(
            destination=DBUS_NAME,
            path="/org/freedesktop/DBus",
            interface=DBUS_NAME,
            member=member,
            signature="s",
            body=[rule],
            flags=MessageFlag.NO_REPLY_EXPECTED if remove else MessageFlag.NONE,
            serial=self._bus.next_serial(),
        )
        if not remove:
            self._match_calls[msg.serial] = rule
        self._bus.send(msg).add_done_callback(_written)

    def _match_refused(self, rule: str, reply: Message) -> None:
        """The bus daemon refused a unit's rule: signals may have been missed."""
        reason = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        self.unit_matches = 0  # one rule for all units on the next connection
        self.lose(
            SdexecError(
                DBUS_ERRNO.get(reply.error_name or "", errno.EIO),
                f"the bus refused a match rule ({reply.error_name}: {reason}); "
                f"reconnecting with one rule for all units",
            )
        )

    async def start_transient(
        self, unit: str, properties: list[list[Any]], fds: Sequence[int] = ()
    ) -> str:
        """StartTransientUnit(unit, "fail", properties, []); returns the job path."""
        body = await self._manager(
            "StartTransientUnit", "ssa(sv)a(sa(sv))", [unit, "fail", properties, []], fds
        )
        return str(body[0])

    async def kill(self, unit: str, signum: int, who: str = "all") -> None:
        await self._manager("KillUnit", "ssi", [unit, who, signum])

    async def stop(self, unit: str) -> None:
        await self._manager("StopUnit", "ss", [unit, "replace"])

    async def reset_failed(self, unit: str) -> None:
        await self._manager("ResetFailedUnit", "s", [unit])

    async def list_units(self, patterns: list[str]) -> list[tuple[str, str, str]]:
        """(name, active state, sub state) of loaded units matching the globs."""
        (units,) = await self._manager("ListUnitsByPatterns", "asas", [[], patterns])
        return [(u[0], u[3], u[4]) for u in units]

    async def properties(self, unit: str, interface: str = "") -> dict[str, Any]:
        """All properties of a unit (every interface when ``interface`` is empty)."""
        reply = await self._call(
            Message(
                destination=SYSTEMD,
                path=unit_object_path(unit),
                interface=PROPS_IFACE,
                member="GetAll",
                signature="s",
                body=[interface],
                flags=MessageFlag.NO_AUTOSTART,
            )
        )
        return _unwrap(reply.body[0])

    async def manager_cgroup(self) -> str:
        """The manager's own cgroup (``ControlGroup``), relative to the cgroup2 root."""
        return str(await self._get(MANAGER_PATH, MANAGER_IFACE, "ControlGroup"))

    async def kill_mode(self, unit: str) -> str:
        """A service unit's ``KillMode`` (control-group, mixed, process or none)."""
        return str(await self._get(unit_object_path(unit), SERVICE_IFACE, "KillMode"))

    async def _get(self, path: str, interface: str, name: str) -> Any:
        reply = await self._call(
            Message(
                destination=SYSTEMD,
                path=path,
                interface=PROPS_IFACE,
                member="Get",
                signature="ss",
                body=[interface, name],
                flags=MessageFlag.NO_AUTOSTART,
            )
        )
        value = reply.body[0]
        return value.value if isinstance(value, Variant) else value

    # --- signals -----------------------------------------------------------------------

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type != MessageType.SIGNAL:
            if self._match_calls and msg.reply_serial in self._match_calls:
                rule = self._match_calls.pop(msg.reply_serial)
                if msg.message_type == MessageType.ERROR:
                    self._match_refused(rule, msg)
            return False
        if msg.member == "PropertiesChanged":
            listener = self._by_path.get(msg.path or "")
            if listener is None:
                self.unrouted += 1
            else:
                iface, changed = msg.body[0], msg.body[1]
                if iface == SERVICE_IFACE:
                    listener.service_changed(_unwrap(changed))
                elif iface == UNIT_IFACE:
                    listener.unit_changed(_unwrap(changed))
        elif msg.member == "JobRemoved" and msg.interface == MANAGER_IFACE:
            _id, _job, unit, result = msg.body
            listener = self._by_name.get(unit)
            if listener is not None:
                listener.job_removed(result)
        elif msg.member == "NameOwnerChanged" and msg.sender == DBUS_NAME:
            name, _old, new = msg.body
            if name == SYSTEMD and not new:
                self.lose(SdexecError(errno.EHOSTDOWN, "the systemd manager left the bus"))
        return False
