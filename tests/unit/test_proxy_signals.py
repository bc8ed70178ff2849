"""The proxy's SIGHUP/SIGCONT to its child must never lose the child's status."""

from __future__ import annotations

import asyncio
import signal
import time

from sdexec.proxy.run import Proxy, ProxyOptions, exit_code


def test_sighup_then_sigcont_keeps_the_childs_status() -> None:
    # Process.send_signal polls (reaps) before signalling: if the child died of
    # the SIGHUP just before the SIGCONT, its status was lost (asyncio said 255).
    # Sweep the gap between the two signals across the child's dying time.
    async def main() -> list[int]:
        codes = []
        proxy = Proxy(ProxyOptions(target="/nonexistent"))
        for i in range(200):
            proxy.child = await asyncio.create_subprocess_exec("sleep", "60")
            proxy._signal_child(signal.SIGHUP)
            time.sleep((i % 20) * 0.0002)  # noqa: ASYNC251 - the loop must not run here
            proxy._signal_child(signal.SIGCONT)
            codes.append(exit_code(await proxy.child.wait()))
        return codes

    assert set(asyncio.run(main())) == {128 + signal.SIGHUP}


def test_exit_code_of_a_signal_is_128_plus_it() -> None:
    assert exit_code(-signal.SIGTERM) == 143
    assert exit_code(7) == 7
