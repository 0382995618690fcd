"""The cluster's HTTP surfaces besides the proxy: the admin API (resources, apply, credentials, policy eval, the
agent endpoints) and the cluster's own endpoints on `https://<domain>` (OAuth2 token, discovery, JWKS, browser
login, the `wardgate` client's endpoints)."""
