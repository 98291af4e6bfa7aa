"""Test helpers: :class:`IndigoEmulator`, an emulator of the Indigo API token endpoints.

Test bots and token handling against it in process (``emu.transport()``) or over a
loopback socket (``emu.serve()``, ``emu.serve_in_thread()``; needs the ``emulator``
extra), and make the API misbehave on cue with :class:`Fault`::

    from indigo_auth.testing import Fault, IndigoEmulator

    emu = IndigoEmulator(accounts={"bot@example.com": "s3cret"}, token_lifetime=2.0)
    emu.inject("signin", Fault.status(503, retry_after=1), times=1)
"""

from __future__ import annotations

from ._emulator import Account as Account
from ._emulator import Counters as Counters
from ._emulator import IndigoEmulator as IndigoEmulator
from ._faults import Fault as Fault
from ._server import run_emulator as run_emulator

__all__ = ["Account", "Counters", "Fault", "IndigoEmulator", "run_emulator"]
