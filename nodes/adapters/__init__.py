from .base import ADAPTERS, NodeAdapter, NodeError, adapter_for
from .ollama import OllamaAdapter
from .openai import OpenAICompatibleAdapter

__all__ = ["ADAPTERS", "NodeAdapter", "NodeError", "OllamaAdapter", "OpenAICompatibleAdapter", "adapter_for"]
