"""Client side of sdexec: talk to a server over RFC 6 RPC.

- :mod:`sdexec.client.handle`: the asyncio :class:`~sdexec.client.handle.Handle`
  (``rpc``, streaming ``stream``, NORESPONSE ``send``);
- :mod:`sdexec.client.process`: run a remote process from asyncio code;
- :mod:`sdexec.client.exec`: the sans-IO RFC 42 exec session shared by both
  clients (request, responses, stdin credit, exit codes);
- :mod:`sdexec.client.blocking`: the CLI's poll(2) client, which starts
  without importing asyncio.

Nothing is imported here, so that ``import sdexec.client.blocking`` stays cheap.
"""
