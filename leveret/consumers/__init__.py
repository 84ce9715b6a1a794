"""Consumers: the :class:`App` that holds handlers and the :class:`Worker` that runs them."""

from leveret.consumers.app import App, Handler
from leveret.consumers.context import Context
from leveret.consumers.delivery import Outcome
from leveret.consumers.worker import Worker

__all__ = ["App", "Context", "Handler", "Outcome", "Worker"]
