"""Replies: RFC 3834 policy, template rendering, MIME composition and the senders (SMTP relay, maildir)."""
