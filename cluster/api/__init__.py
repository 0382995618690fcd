"""The cluster's HTTP API: admin resource CRUD and apply (later: user login/connect, agent streams)."""
