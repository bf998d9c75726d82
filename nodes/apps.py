from django.apps import AppConfig


class NodesConfig(AppConfig):
    name = "nodes"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
