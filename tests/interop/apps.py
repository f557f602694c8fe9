"""The interop app's declaration, so that the framework's servers serve the interop
services through ``INSTALLED_APPS = ["tests.interop"]`` as they serve any app.

UnimplementedService is served by its generated base class, as an interop server must:
every method of it answers UNIMPLEMENTED, from inside the server stack.
"""

from __future__ import annotations

from typing import Any

from resilience.apps.config import AppConfig, Service
from tests.interop.protos import test_pb2, test_pb2_grpc
from tests.interop.servicer import AsyncInteropServicer, InteropServicer


def _unimplemented(settings: Any) -> test_pb2_grpc.UnimplementedServiceServicer:
    return test_pb2_grpc.UnimplementedServiceServicer()


class InteropConfig(AppConfig):
    name = "tests.interop"
    services = (
        Service(
            descriptor=test_pb2.DESCRIPTOR.services_by_name["TestService"],
            add_to_server=test_pb2_grpc.add_TestServiceServicer_to_server,
            stub=test_pb2_grpc.TestServiceStub,
            servicer=lambda settings: InteropServicer(),
            async_servicer=lambda settings: AsyncInteropServicer(),
        ),
        Service(
            descriptor=test_pb2.DESCRIPTOR.services_by_name["UnimplementedService"],
            add_to_server=test_pb2_grpc.add_UnimplementedServiceServicer_to_server,
            stub=test_pb2_grpc.UnimplementedServiceStub,
            servicer=_unimplemented,
            async_servicer=_unimplemented,
        ),
    )
