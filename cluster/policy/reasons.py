"""Why a decision came out as it did: well-known reasons, in the style of pomerium's criteria reasons."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """The reason carried by every Decision, and logged with it.

    The values are stable strings: access logs, metrics and dashboards match on them.
    """

    RULE_MATCH = "rule-match"
    """A rule's condition matched; the decision has that rule's effect and ref."""

    NO_MATCH = "no-rule-matched"
    """No rule matched (or there were none): the default, deny."""

    CONDITION_ERROR = "condition-error"
    """A condition could not be evaluated (CEL or Rego failed); denied, whatever the rule's effect."""
