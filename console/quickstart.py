"""The quickstart page's snippets: one request in curl, Python (openai), JavaScript (fetch) and
Python (anthropic), against the caller's base URL with a model their organization may use."""
from __future__ import annotations

import json
from dataclasses import dataclass

from django.conf import settings

KEY_PLACEHOLDER = "sk_live_YOUR_KEY"
PROMPT = "Say hello in five words."


def base_url(request) -> str:
    """Where clients reach this platform: ``PUBLIC_BASE_URL`` when it is configured, else the
    scheme and host of the request the page was asked with."""
    if getattr(settings, "PUBLIC_BASE_URL_CONFIGURED", False):
        return settings.PUBLIC_BASE_URL.rstrip("/")
    return f"{request.scheme}://{request.get_host()}"


@dataclass(frozen=True)
class Snippet:
    id: str
    label: str
    language: str
    code: str


def snippets(*, base: str, model: str, key: str = KEY_PLACEHOLDER) -> list[Snippet]:
    api = f"{base}/v1"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}]})
    curl = f"""curl {api}/chat/completions \\
  -H "Authorization: Bearer {key}" \\
  -H "Content-Type: application/json" \\
  -d '{body}'"""
    python = f"""# pip install openai
from openai import OpenAI

client = OpenAI(base_url="{api}", api_key="{key}")
response = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "{PROMPT}"}}],
)
print(response.choices[0].message.content)"""
    javascript = f"""// Node 18+ (save as quickstart.mjs) or a browser (with a publishable key there); no package needed
const response = await fetch("{api}/chat/completions", {{
  method: "POST",
  headers: {{ "Authorization": "Bearer {key}", "Content-Type": "application/json" }},
  body: JSON.stringify({{
    model: "{model}",
    messages: [{{ role: "user", content: "{PROMPT}" }}],
  }}),
}});
const data = await response.json();
console.log(data.choices[0].message.content);"""
    anthropic = f"""# pip install anthropic
from anthropic import Anthropic

client = Anthropic(base_url="{base}", api_key="{key}")
message = client.messages.create(
    model="{model}",
    max_tokens=256,
    messages=[{{"role": "user", "content": "{PROMPT}"}}],
)
print(message.content[0].text)"""
    return [
        Snippet("curl", "curl", "shell", curl),
        Snippet("python", "Python (openai)", "python", python),
        Snippet("javascript", "JavaScript (fetch)", "javascript", javascript),
        Snippet("anthropic", "Python (anthropic)", "python", anthropic),
    ]
