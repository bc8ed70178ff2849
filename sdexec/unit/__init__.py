"""Programs that run inside a transient unit, not in the server.

- :mod:`sdexec.unit.channel_exec`: placed in front of a command that has RFC 42
  channels; it moves the channels' fds into place and ``execve``\\ s the command.

The server starts them as ``python -I -S FILE`` (no ``site``, no sdexec on
``sys.path``), so they import the standard library only, never sdexec.
"""
