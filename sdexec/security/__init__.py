"""Security: who may connect, RFC 38/39 signed requests, replay detection, limits.

- :mod:`sdexec.security.kv`: RFC 38 key-value encoding (sans-IO);
- :mod:`sdexec.security.sign`: RFC 39 signatures, mechanisms ``none`` and ``munge``;
- :mod:`sdexec.security.munge`: a small ctypes binding to libmunge;
- :mod:`sdexec.security.replay`: the server's replay cache;
- :mod:`sdexec.security.policy`: admission at the handshake, connection limits,
  and the RFC 42 "Request Authentication" rules;
- :mod:`sdexec.security.gate`: the server step that applies those rules to each
  request, in order, before the router dispatches it;
- :mod:`sdexec.security.guest`: what a guest's ``exec`` may ask for.

Nothing is imported here: the client side (``sdexec exec --sign``) imports only
:mod:`~sdexec.security.kv` and :mod:`~sdexec.security.sign`, and libmunge is
loaded only when the ``munge`` mechanism is used.
"""
