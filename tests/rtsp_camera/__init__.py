"""A test IP camera that is a real RTSP server (GStreamer's), and the pytest fixtures that run it.

`server.py` runs under the system Python (it needs `gi`); `fixture.py` starts and commands it from
the venv's tests, and is a pytest plugin (`pytest_plugins = ["tests.rtsp_camera.fixture"]`).
"""

import pytest

# Before fixture.py is imported: a plugin module that pytest did not rewrite is a warning (an error here).
pytest.register_assert_rewrite("tests.rtsp_camera.fixture")
