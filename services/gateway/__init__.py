"""SMTP and LMTP edge: accept served recipients, store raw mail durably, enqueue, then answer."""
