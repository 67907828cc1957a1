"""Transport security around the Serve gRPC proxy (which has no TLS of its own in Ray 2.60)."""

from lungsearch.security.tls_proxy import TLSProxy, nginx_available

__all__ = ["TLSProxy", "nginx_available"]
