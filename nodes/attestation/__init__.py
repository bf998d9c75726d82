"""Node attestation: a node proves which software it runs, and which keys it holds, before it serves.

* ``report``: the ``x509-report-v1`` evidence format, both sides (a node makes it, we check it).
* ``verifiers``: the interface every evidence format implements, registered by format name,
  and the checks common to all (nonce, freshness, allow-listed measurement).
* ``x509``: the verifier of ``x509-report-v1`` (a signed report, a certificate chain to a trusted root).
* ``ca``: making a root and issuing node attestation certificates (``manage.py attestation_ca``).
* ``services``: challenges, verification records, the node's attestation state.

Nothing here but ``services`` touches the database, so a node process can import the rest.
"""
