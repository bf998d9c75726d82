"""Mail the live server sent: its file-based email backend writes each message under EMAIL_FILE_PATH
(tests/conftest.py sets it for every server process the tests start)."""
from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
from pathlib import Path


def messages_to(address: str) -> list[email.message.EmailMessage]:
    found = []
    folder = Path(os.environ["EMAIL_FILE_PATH"])
    for path in sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime) if folder.exists() else []:
        for chunk in path.read_text().split("-" * 79):
            if chunk.strip():
                message = email.message_from_string(chunk.strip() + "\n", policy=email.policy.default)
                if address.lower() in (message["To"] or "").lower():
                    found.append(message)
    return found


async def link_in_mail(address: str, pattern: str, *, timeout: float = 10.0) -> str:
    """The first link matching ``pattern`` in the newest message to ``address`` (waits for it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for message in reversed(messages_to(address)):
            body = message.get_body(preferencelist=("plain",)).get_content()
            match = re.search(rf"https?://\S*{pattern}\S*", body)
            if match:
                return match.group(0)
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no mail to {address} with a link like {pattern!r}")
        await asyncio.sleep(0.2)
