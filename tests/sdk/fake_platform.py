"""A sealed-request platform in-process (httpx.MockTransport), following gateway/SEALED.md: a node
with a real attestation chain (the tests' CA), the gateway's pass-through of ciphertext, the node's
decryption, sealed answer and signed receipt. ``tamper`` makes one part lie, to prove the SDK notices."""
from __future__ import annotations

import hashlib
import json
import time

import httpx
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from private_inference import crypto

from nodes.attestation import ca, report
from tests.conftest import SIM_MEASUREMENT, attestation_pki


class FakePlatform:
    def __init__(self, *, model: str = "sim-small", attestation_key=None, certificates=None, measurement=SIM_MEASUREMENT):
        pki = attestation_pki()
        self.attestation_key = attestation_key or ca.load_key(pki / "simulator.key")
        self.certificates = certificates or [ca.pem(c) for c in ca.load_certificates(pki / "simulator.pem")]
        self.root_path = pki / "root.pem"
        self.measurement = measurement
        self.model = model
        self.signing = ed25519.Ed25519PrivateKey.generate()
        self.encryption = x25519.X25519PrivateKey.generate()
        self.gateway_signing = ed25519.Ed25519PrivateKey.generate()
        self.gateway_encryption = x25519.X25519PrivateKey.generate()
        self.tamper: str | None = None
        self.bodies: list[bytes] = []  # every request body the "gateway" received
        self.opened: list[dict] = []  # what the recipient decrypted
        self.counter = 0

    def keys(self) -> dict[str, str]:
        return {"signing": report.raw_public(self.signing.public_key()),
                "encryption": report.raw_public(self.encryption.public_key())}

    def evidence(self) -> dict:
        keys = self.keys()
        if self.tamper == "key_mismatch":  # the platform lists keys the report does not bind
            keys = {**keys, "encryption": report.raw_public(x25519.X25519PrivateKey.generate().public_key())}
            self._listed = keys
        data = report.report_bytes(nonce="ab" * 16, measurement=self.measurement, signing_key=keys["signing"],
                                   encryption_key=self.keys()["encryption"])
        evidence = report.evidence(self.attestation_key, self.certificates, data)
        if self.tamper == "report_signature":
            evidence["report"] = report.b64(data.replace(b'"version"', b'"version" '))
        return evidence

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.content)
        path = request.url.path
        if path == "/v1/nodes":
            listed = self.keys()
            if self.tamper == "key_mismatch":
                listed = {**listed, "encryption": report.raw_public(x25519.X25519PrivateKey.generate().public_key())}
            node = {"id": "node_1", "attestation": "unverified" if self.tamper == "unverified" else "verified",
                    "models": [self.model], "load": 0, "public_keys": listed}
            return httpx.Response(200, json={"object": "list", "data": [node]})
        if path == "/v1/nodes/node_1/attestation":
            return httpx.Response(200, json={"object": "node.attestation", "result": "verified", "node": "node_1",
                                             "measurement": self.measurement, "expires_at": int(time.time()) + 3600,
                                             "evidence": self.evidence(), "public_keys": self.keys()})
        if path == "/pki/public_key":
            return httpx.Response(200, json={
                "key_id": "gw1", "encryption_key": report.raw_public(self.gateway_encryption.public_key()),
                "signing_key": report.raw_public(self.gateway_signing.public_key())})
        if path == "/pki/attestation_roots":
            return httpx.Response(404, json={"error": {"type": "not_found_error", "code": "not_found",
                                                       "message": "No such endpoint", "request_id": "req_x"}})
        if path == "/v1/sealed/chat/completions":
            return self.sealed(json.loads(request.content))
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "No such endpoint"}})

    def sealed(self, envelope: dict) -> httpx.Response:
        self.counter += 1
        request_id = f"req_fake{self.counter}"
        standard = envelope["tier"] == "standard"
        private = self.gateway_encryption if standard else self.encryption
        try:
            chat = crypto.open_request(envelope, private)
        except Exception:  # noqa: BLE001
            return httpx.Response(400, json={"error": {"type": "invalid_request_error", "code": "decryption_failed",
                                                       "message": "cannot decrypt", "request_id": request_id}})
        self.opened.append(chat)
        words = chat["messages"][-1]["content"].split()[1:][: chat["max_tokens"]]
        prompt_tokens, output_tokens = 7, len(words)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens,
                 "total_tokens": prompt_tokens + output_tokens}
        fields = {
            "request_id": request_id, "payload_id": envelope["payload_id"], "key_hash": "00" * 32,
            "request_hash": hashlib.sha256(crypto.unb64(envelope["ciphertext"])).hexdigest(),
            "model": chat["model"], "node_id": "gateway" if standard else "node_1",
            "measurement": "" if standard else self.measurement,
            "input_tokens": prompt_tokens, "output_tokens": output_tokens + (5 if self.tamper == "tokens" else 0),
            "issued_at": int(time.time()),
        }
        if self.tamper == "receipt_model":
            fields["model"] = "other-model"
        signer = self.gateway_signing if standard else self.signing
        if self.tamper == "receipt_signature":
            signer = ed25519.Ed25519PrivateKey.generate()
        receipt = crypto.sign_receipt(fields, signer)
        sealer = crypto.ResponseSealer(envelope["client_public_key"], envelope["payload_id"])
        headers = {"x-request-id": request_id}
        if not envelope["header"]["stream"]:
            completion = {"id": "chatcmpl-1", "object": "chat.completion", "model": chat["model"],
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                                       "finish_reason": "stop"}], "usage": usage}
            piece = sealer.seal(completion)
            if self.tamper == "ciphertext":
                raw = bytearray(crypto.unb64(piece["ciphertext"]))
                raw[0] ^= 1
                piece["ciphertext"] = crypto.b64(bytes(raw))
            return httpx.Response(200, headers=headers, json={
                "object": "sealed.response", "ephemeral_public_key": sealer.ephemeral_public_key, **piece,
                "receipt": receipt})
        frames = [("sealed.start", {"ephemeral_public_key": sealer.ephemeral_public_key})]
        for i, word in enumerate(words):
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": (" " if i else "") + word}}]}
            frames.append(("sealed.chunk", sealer.seal(chunk)))
        frames.append(("sealed.chunk", sealer.seal({"object": "chat.completion.chunk", "choices": [], "usage": usage})))
        if self.tamper == "reorder":
            frames[1], frames[2] = frames[2], frames[1]
        if self.tamper != "no_receipt":
            frames.append(("sealed.receipt", {"receipt": receipt}))
        text = "".join(f"id: evt_{n}\nevent: {name}\ndata: {json.dumps(data)}\n\n" for n, (name, data) in enumerate(frames, 1))
        text += f"id: evt_{len(frames) + 1}\ndata: [DONE]\n\n"
        return httpx.Response(200, headers={**headers, "content-type": "text/event-stream"}, content=text.encode())
