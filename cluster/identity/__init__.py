"""Who is this: certificates, credentials, tokens and sessions."""
