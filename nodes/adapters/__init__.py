from .base import ADAPTERS, NodeAdapter, NodeError, adapter_for
from .ollama import OllamaAdapter
from .openai import OpenAICompatibleAdapter
from .anthropic import AnthropicAdapter
from .providers import CompatibleProviderAdapter, OpenAIProviderAdapter
from .thox import ThoxAdapter

__all__ = [
    "ADAPTERS", "NodeAdapter", "NodeError", "OllamaAdapter", "OpenAICompatibleAdapter", "adapter_for",
    "AnthropicAdapter", "CompatibleProviderAdapter", "OpenAIProviderAdapter", "ThoxAdapter",
]
