"""Who is this: the cluster PKI, credentials, access tokens, the session service (open, evict, revoke), OIDC
login, tunnel addresses, and the authenticator the request paths use."""
