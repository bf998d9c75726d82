from .base import ADAPTERS, NodeAdapter, NodeError, adapter_for
from .ollama import OllamaAdapter
from .openai import OpenAICompatibleAdapter
from .thox import ThoxAdapter

__all__ = ["ADAPTERS", "NodeAdapter", "NodeError", "OllamaAdapter", "OpenAICompatibleAdapter", "ThoxAdapter", "adapter_for"]
