"""Secrets: tokens at rest (AES-GCM keyring) and the Temporal payload codec."""
