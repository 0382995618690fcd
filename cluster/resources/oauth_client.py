"""OAuthClient and AuthorizationCode: what the cluster's authorization server stores for interactive MCP
clients. Both are made by the cluster (dynamic client registration, the authorization endpoint), never applied.

A registered client grants nothing: the user who signs in through it still needs policies that allow the
Service. A code holds no secret: its name is a hash of the code the client got, and it is deleted when used.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from wardgate.cluster.resources.meta import EmptyStatus, Model, Name, Resource


class OAuthClientSpec(Model):
    """A public client (token_endpoint_auth_method `none`, PKCE S256): its exact redirect URIs."""

    client_name: str = Field(default="", max_length=200)
    redirect_uris: list[str] = Field(min_length=1, max_length=10)


class OAuthClient(Resource[OAuthClientSpec, EmptyStatus]):
    """A client registered through RFC 7591 dynamic client registration; its name is the `client_id`."""

    kind_name = "OAuthClient"
    plural = "oauthclients"
    status: EmptyStatus = Field(default_factory=EmptyStatus)


class AuthorizationCodeSpec(Model):
    """What a code was issued for: it is redeemed only by this client, with this redirect URI, with the
    verifier of this S256 challenge, for this resource (the audience of the token), before `expiresAt`."""

    client: Name
    user: Name
    session: Name
    """The browser-login Session the user signed in with: the token rides on it and ends with it."""
    redirect_uri: str = Field(max_length=2048)
    code_challenge: str = Field(min_length=43, max_length=43)
    resource: str = Field(max_length=2048)
    scope: str = Field(default="", max_length=1024)
    expires_at: datetime


class AuthorizationCode(Resource[AuthorizationCodeSpec, EmptyStatus]):
    """A one-time authorization code (RFC 6749 §4.1), named by the hash of the code itself."""

    kind_name = "AuthorizationCode"
    plural = "authorizationcodes"
    status: EmptyStatus = Field(default_factory=EmptyStatus)
