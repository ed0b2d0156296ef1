"""Readiness as any client sees it: the gRPC health service's overall status (service "") is
SERVING once the server has loaded its models and bound every port (Server.start), and turns
NOT_SERVING when it starts to drain. The tests, the `--workers` supervisor and the benchmarks
wait on this, never on a log line. Standard library and grpc only: no TensorFlow import.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Retry a refused connection every 0.1 s, not with gRPC's default backoff (1 s, growing).
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 200)]


def serving(address: str, credentials: grpc.ChannelCredentials | None = None,
            timeout: float = 2.0) -> bool:
    """True if the server at `address` says SERVING now."""
    channel = (grpc.secure_channel(address, credentials, FAST_RECONNECT) if credentials
               else grpc.insecure_channel(address, FAST_RECONNECT))
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_serving(address: str, timeout: float, alive: Callable[[], bool] = lambda: True,
                 credentials: grpc.ChannelCredentials | None = None) -> bool:
    """Wait until `address` is SERVING (True), `alive()` turns False or `timeout` passes
    (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        if serving(address, credentials, timeout=min(2.0, max(0.1, deadline - time.monotonic()))):
            return True
        time.sleep(0.1)
    return False


async def until_serving(address: str, service: str = "") -> None:
    """Wait, on the event loop and without a deadline (the caller sets one), until the health
    service at `address` says `service` is SERVING; a refused connection or a service not yet
    registered is tried again."""
    async with grpc.aio.insecure_channel(address, FAST_RECONNECT) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service),
                                         timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)
