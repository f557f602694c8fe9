"""The gRPC interop test cases (grpc/grpc's doc/interop-test-descriptions.md), run against
plain grpcio, the framework's servers and clients, and the plain interceptors; see
``test_interop.py``. Installed as an app (``INSTALLED_APPS = ["tests.interop"]``) it serves
``grpc.testing.TestService`` and ``grpc.testing.UnimplementedService``.

``protos/`` holds wire-compatible definitions of grpc/grpc's
``src/proto/grpc/testing/{empty,messages,test}.proto`` (package ``grpc.testing``; test.proto
trimmed to the two services above), importing each other by their path from the project
root. The ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` modules were generated with the
dev extra's pinned grpcio-tools by genproto's own code, so they import by package path
(``from tests.interop.protos import messages_pb2``); after editing a proto, from the root::

    .venv/bin/python -c "from resilience.protos import app_location, app_protos, generate; \\
        package, root = app_location('tests.interop'); generate(app_protos(package), root)"
"""
