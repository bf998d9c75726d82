from .base import ADAPTERS, NodeAdapter, NodeError, adapter_for
from .openai import OpenAICompatibleAdapter

__all__ = ["ADAPTERS", "NodeAdapter", "NodeError", "OpenAICompatibleAdapter", "adapter_for"]
