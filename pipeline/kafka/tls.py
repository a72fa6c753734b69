"""A TLS handshake with the bootstrap servers before the Kafka clients start.

Both client libraries treat a refused certificate like a broker that is down: kafka-python logs it and retries
its bootstrap with backoff for ever, librdkafka likewise. A certificate the configured CA does not vouch for, or
one naming another host, needs an operator, not a retry; ``check_tls`` makes one handshake per bootstrap server
as the clients make it (the configured CA, the client certificate, the host name checked) and turns such a
refusal into one ``ConfigError`` line. A server that does not answer, or drops the connection, is left to the
clients' retries (it may be starting). Brokers learnt from metadata later are not checked here.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from pipeline.config import ConfigError

log = logging.getLogger(__name__)


def check_tls(bootstrap_servers: str, security: dict[str, Any], timeout_s: float = 5.0) -> None:
    """Raise ConfigError (one line) when a bootstrap server's TLS handshake is refused; ``security``: the
    kafka-python options of ``RunConfig.kafka_security``. Nothing to do without SSL."""
    if security.get("security_protocol") not in ("SSL", "SASL_SSL"):
        return
    cafile = security.get("ssl_cafile") or None
    context = ssl.create_default_context(cafile=cafile)
    if security.get("ssl_certfile"):
        context.load_cert_chain(security["ssl_certfile"], security.get("ssl_keyfile") or None,
                                security.get("ssl_password") or None)
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s) as raw, \
                    context.wrap_socket(raw, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(f"TLS handshake with {server.strip()} failed: the broker's certificate was refused "
                              f"({exc.verify_message}); check ssl_cafile ({cafile or 'the system CAs'}) and that "
                              f"the certificate names {host}") from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            log.debug("TLS check of %s: connection closed (%s); left to the client's retries", server, exc)
        except ssl.SSLError as exc:
            raise ConfigError(f"TLS handshake with {server.strip()} failed ({exc.reason or exc}); is it a TLS "
                              f"listener, and do security_protocol and the ssl_* settings match it?") from None
        except (OSError, ValueError) as exc:
            log.debug("TLS check of %s: %s; left to the client's retries", server, exc)
