"""The bundle tests serve the service tests' tiny bundle."""

from tests.service.conftest import bundle_dir

__all__ = ["bundle_dir"]
