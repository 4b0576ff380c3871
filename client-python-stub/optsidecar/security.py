"""TLS and bearer tokens for a :class:`~optsidecar.Client`'s channel.

The rule: the channel is TLS exactly when a CA file is given (``tls_ca`` or ``OPTSIDECAR_TLS_CA``),
which verifies the server's certificate; a client certificate and key (``tls_cert`` and
``tls_key``, or ``OPTSIDECAR_TLS_CERT`` and ``OPTSIDECAR_TLS_KEY``) add mutual TLS. A token
(``token`` or ``OPTSIDECAR_TOKEN``) is sent as ``authorization: Bearer <token>`` on every call.
An argument left ``None`` is taken from the environment; ``""`` means none, whatever it says.
"""

from __future__ import annotations

import collections
import os
from typing import Optional

import grpc

TLS_CA_ENVIRONMENT_VARIABLE = "OPTSIDECAR_TLS_CA"
TLS_CERT_ENVIRONMENT_VARIABLE = "OPTSIDECAR_TLS_CERT"
TLS_KEY_ENVIRONMENT_VARIABLE = "OPTSIDECAR_TLS_KEY"
TOKEN_ENVIRONMENT_VARIABLE = "OPTSIDECAR_TOKEN"


class Security(collections.namedtuple("Security", "tls_ca tls_cert tls_key token")):
    """The TLS files and token a channel uses, each a str or None."""

    @classmethod
    def resolve(cls, tls_ca: Optional[str] = None, tls_cert: Optional[str] = None,
                tls_key: Optional[str] = None, token: Optional[str] = None) -> "Security":
        """The given settings, those left None from the environment; checks they go together."""
        def pick(value: Optional[str], variable: str) -> Optional[str]:
            if value is None:
                value = os.environ.get(variable)
            return str(value) if value else None

        s = cls(pick(tls_ca, TLS_CA_ENVIRONMENT_VARIABLE), pick(tls_cert, TLS_CERT_ENVIRONMENT_VARIABLE),
                pick(tls_key, TLS_KEY_ENVIRONMENT_VARIABLE), pick(token, TOKEN_ENVIRONMENT_VARIABLE))
        if (s.tls_cert is None) != (s.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: a client certificate needs its key")
        if s.tls_cert is not None and s.tls_ca is None:
            raise ValueError("a client certificate (tls_cert, tls_key) needs tls_ca: TLS is on when a CA is given")
        return s

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None

    def channel(self, target: str, options) -> grpc.Channel:
        """A channel to ``target``: TLS or plaintext as the rule says, with the token attached."""
        if self.tls:
            if target.startswith("unix:"):
                raise ValueError(f"{target}: Unix sockets are served in plaintext; give no tls_ca")
            channel = grpc.secure_channel(target, self._credentials(), options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        if self.token is not None:
            channel = grpc.intercept_channel(channel, _BearerToken(self.token))
        return channel

    def _credentials(self) -> grpc.ChannelCredentials:
        def read(path: Optional[str], what: str) -> Optional[bytes]:
            if path is None:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise ValueError(f"{what} {path}: {e.strerror or e}") from e

        return grpc.ssl_channel_credentials(root_certificates=read(self.tls_ca, "tls_ca"),
                                            private_key=read(self.tls_key, "tls_key"),
                                            certificate_chain=read(self.tls_cert, "tls_cert"))


class _CallDetails(collections.namedtuple(
        "_CallDetails", "method timeout metadata credentials wait_for_ready compression"),
        grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call's metadata."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(d.metadata or ()) + [self._header]
        return _CallDetails(d.method, d.timeout, metadata, d.credentials,
                            getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)
