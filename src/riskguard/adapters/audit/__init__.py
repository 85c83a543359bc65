"""The tamper-evident audit log: hash-chained records, an RFC 6962 Merkle tree over them and
signed checkpoints (see docs/audit.md).

- :mod:`.canonical` — RFC 8785 canonical JSON for record bodies;
- :mod:`.merkle` — Merkle hashing, compact ranges, inclusion/consistency proofs and checks;
- :mod:`.checkpoint` — C2SP signed notes and tlog checkpoints (Ed25519);
- :mod:`.chain` — records, their canonical bytes and hashes, the appender's chain state;
- :mod:`.verify` — the one-pass verifier that names the first bad record;
- :mod:`.log` — the ``AuditLog`` interface for the service layer and ``MemoryAuditLog``;
- :mod:`.keys` — settings (``RISKGUARD_AUDIT_*``) and the signing key;
- :mod:`.cli` — ``riskguard audit verify | keygen``.

The SQL implementation is :class:`riskguard.adapters.sql.audit.SqlAuditLog`. This package
imports nothing at load time, so the command line starts fast.
"""
