"""Foundations every layer may use: the error family, server URIs, log set-up.

- :mod:`sdexec.base.errors`: :class:`~sdexec.base.errors.SdexecError`, the one
  errno-carrying error type, and the helpers that read an errno out of any
  exception;
- :mod:`sdexec.base.uri`: where a client finds a server (``local://``,
  ``ssh://``, ``tcp://``, ``pid:``, resolver plugins);
- :mod:`sdexec.base.logconfig`: structlog set-up for the long-running
  processes (``sdexec serve``, ``sdexec proxy``).

This package imports nothing above it, and nothing here is imported by this
face, so that the CLI's start-up path loads only what it uses.
"""
