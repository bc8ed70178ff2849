"""``sdexec proxy``: one connection to a server, shared through a private socket.

See :mod:`sdexec.proxy.run` for the process (directory, child, reconnect),
:mod:`sdexec.proxy.router` for message routing, and
:mod:`sdexec.proxy.upstream` for the connection to the server.
"""
