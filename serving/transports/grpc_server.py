"""The gRPC server's transport: its options (--grpc_channel_arguments, message limits,
SO_REUSEPORT for --workers) and TLS (--ssl_config_file). The servicers are the protocols', added
by serving/server.py; the interceptors are auth's and the access log's."""

from __future__ import annotations

import grpc

from serving.repository import protos


def channel_arguments(text: str) -> list[tuple[str, object]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise protos.ConfigError(f"--grpc_channel_arguments: {item!r} is not key=value")
        out.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return out


def server_options(channel_args: str, max_request_bytes: int, reuse_port: bool
                   ) -> list[tuple[str, object]]:
    """The gRPC server's options; gRPC core takes the first of repeated keys, so the user's
    --grpc_channel_arguments go first to win."""
    return [*channel_arguments(channel_args),
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", int(reuse_port))]


def server_credentials(path: str) -> grpc.ServerCredentials:
    ssl = protos.read_text(path, protos.SSLConfig)
    if not ssl.server_key or not ssl.server_cert:
        raise protos.ConfigError(f"{path}: server_key and server_cert (PEM contents) are "
                                 "required")
    return grpc.ssl_server_credentials(
        [(ssl.server_key.encode(), ssl.server_cert.encode())],
        root_certificates=ssl.custom_ca.encode() if ssl.custom_ca else None,
        require_client_auth=ssl.client_verify)
