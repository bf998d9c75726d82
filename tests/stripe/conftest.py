from __future__ import annotations

import pytest

from tests.stripe.receiver import Receiver


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def client(stripe_emu):
    return stripe_emu.client()
