"""The wire and storage contract: resource models (pure pydantic), shared by cluster, agent and client."""

from wardgate.cluster.resources.kinds import KINDS, AnyResource, kind_of, plural_to_kind
from wardgate.cluster.resources.manifest import ManifestError, parse_documents, parse_manifest
from wardgate.cluster.resources.meta import Metadata, Resource

__all__ = [
    "KINDS",
    "AnyResource",
    "ManifestError",
    "Metadata",
    "Resource",
    "kind_of",
    "parse_documents",
    "parse_manifest",
    "plural_to_kind",
]
