"""Apps: the unit a project adds services with, as Django's INSTALLED_APPS."""

from resilience.apps.config import AppConfig, Service
from resilience.apps.registry import Apps, load_apps

__all__ = ["AppConfig", "Apps", "Service", "load_apps"]
