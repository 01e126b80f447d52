"""The audit ledger: events, chain, Merkle proofs, signatures, checkpoints, storage."""
