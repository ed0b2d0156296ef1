"""A `--workers` worker's siblings (serving/supervisor.py starts them): their private loopback
gRPC ports and the token the supervisor hands out, which the worker uses to forward a reload.

A HandleReloadConfigRequest received by any worker is applied by every worker before it is
answered, so no connection sees the old config afterwards: the worker that takes it forwards it
over a private loopback gRPC port per worker, with the random token (a call carrying the token is
a sibling's, and is not forwarded again).
"""

from __future__ import annotations

import asyncio
import os

import grpc
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from serving.clients import readiness
from serving.repository import protos
from serving.transports import auth


class Peers:
    """A worker's view of its siblings: their private addresses and the shared token."""

    def __init__(self, index: int, ports: list[int]):
        self.index = index
        self.ports = ports
        self.token = os.environ.get(auth.PEER_TOKEN_ENV, "")
        if not self.token:
            raise RuntimeError(f"a worker needs {auth.PEER_TOKEN_ENV} (set by the supervisor)")
        self._channels: dict[int, grpc.aio.Channel] = {}

    @property
    def own_address(self) -> str:
        return f"127.0.0.1:{self.ports[self.index]}"

    def is_peer(self, context: grpc.aio.ServicerContext) -> bool:
        """True for a call from a sibling worker (it carries the token)."""
        return auth.is_peer_call(context.invocation_metadata(), self.token)

    def _others(self):
        for i, port in enumerate(self.ports):
            if i != self.index:
                if i not in self._channels:
                    self._channels[i] = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
                yield i, self._channels[i]

    async def reload(self, request: model_management_pb2.ReloadConfigRequest
                     ) -> list[tuple[int, grpc.StatusCode, str]]:
        """Apply a reload on every other worker; returns (worker, code, message) of failures."""
        async def one(i, channel):
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            try:
                response = await stub.HandleReloadConfigRequest(
                    request, timeout=600, metadata=((auth.PEER_TOKEN_HEADER, self.token),))
            except grpc.aio.AioRpcError as e:
                return i, e.code(), e.details() or ""
            if response.status.error_code:
                return i, grpc.StatusCode.UNKNOWN, response.status.error_message
            return None
        results = await asyncio.gather(*[one(i, c) for i, c in self._others()])
        return [r for r in results if r is not None]

    @staticmethod
    def record(config) -> None:
        """After a reload this worker applied: the config, where the supervisor starts a worker
        it restarts from (serving/supervisor.py). Every worker writes the same text; each write
        replaces the file whole."""
        path = os.environ.get(protos.RELOADED_CONFIG_ENV)
        if path:
            protos.write_text(path, config)

    async def wait_up(self, service: str) -> None:
        """Wait until every sibling's health service says `service` is SERVING (a worker turns
        its public health SERVING only then; see Server.start)."""
        await asyncio.gather(*[readiness.until_serving(f"127.0.0.1:{port}", service)
                               for i, port in enumerate(self.ports) if i != self.index])

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
