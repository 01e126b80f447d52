"""Keys and identities: Ed25519 signing keys, TLS material, SuperNode keys."""
