"""Programs that run inside a transient unit, not in the server.

- :mod:`sdexec.unit.channel_exec`: placed in front of a command that has RFC 42
  channels; it moves the channels' fds into place and ``execve``\\ s the command.
- :mod:`sdexec.unit.pty_holder`: keeps a background process's terminal; its
  screen model is :mod:`sdexec.unit.pty_screen`.

The server starts them as ``python -I -S FILE`` (no ``site``, no sdexec on
``sys.path``), so they import the standard library and their siblings here
only (found in their own directory), never the rest of sdexec.
"""
