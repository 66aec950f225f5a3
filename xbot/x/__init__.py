"""Everything about X: the HTTP client, its errors, quota ledger, tokens, scopes and text rules."""
