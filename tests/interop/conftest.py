"""The case modules are plain modules that the test imports: have pytest rewrite their
asserts too, so a failing case says which values differed."""

import pytest

pytest.register_assert_rewrite("tests.interop.cases", "tests.interop.aio_cases")

# protos/test_pb2*.py are generated code whose names only look like test modules.
collect_ignore_glob = ["protos/*"]
