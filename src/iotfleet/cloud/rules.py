"""Topic rules: what the local cloud's rules engine does with a message (IOT_CORE.md section 3).

A :class:`Rule` has a name, the topic filter of its ``FROM`` clause (messages through the broker that
match it trigger the rule; ``None`` for a rule used only by Basic Ingest) and an action:

- ``ingest``: the region's ingest pipeline stores the message (deduplicated, with hourly aggregates);
- ``republish:<topic>``: the message is published again, unchanged, on ``<topic>`` (AWS's republish
  action; ``${topic()}`` in it is replaced by the message's topic).

Basic Ingest (``$aws/rules/<rule>/<topic>``) reaches the named rule whatever its filter (AWS: the FROM
clause is optional for such rules), with ``<topic>`` as its topic, and no subscriber ever sees it. A
Basic Ingest message for a rule that does not exist is counted as ``rule_not_found`` (AWS's RuleNotFound
metric). Rules carry no SQL: the selection is the whole message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from iotfleet.errors import ConfigError, TopicError
from iotfleet.topics import INGEST_RULE, TopicScheme, validate_filter, validate_rule_name, validate_topic

__all__ = ["INGEST", "REPUBLISH", "Rule", "default_rules"]

INGEST: Final = "ingest"
REPUBLISH: Final = "republish"
TOPIC_SUBSTITUTION: Final = "${topic()}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One topic rule; checked when made (:class:`~iotfleet.errors.ConfigError` naming the problem)."""

    name: str
    topic_filter: str | None
    action: str = INGEST

    def __post_init__(self) -> None:
        try:
            validate_rule_name(self.name)
            if self.topic_filter is not None:
                validate_filter(self.topic_filter)
            if self.republish_to is not None:
                validate_topic(self.republish_to.replace(TOPIC_SUBSTITUTION, "x"))
        except TopicError as exc:
            raise ConfigError(f"rule {self.name!r}: {exc.message}") from None
        if self.action != INGEST and self.republish_to is None:
            raise ConfigError(f"rule {self.name!r}: action {self.action!r} is neither 'ingest' nor 'republish:<topic>'")

    @property
    def republish_to(self) -> str | None:
        """The topic of a republish action, or None."""
        kind, _, topic = self.action.partition(":")
        return topic if kind == REPUBLISH and topic else None

    def republish_topic(self, topic: str) -> str | None:
        """Where a republish action sends a message that came on ``topic``; None for another action."""
        target = self.republish_to
        return None if target is None else target.replace(TOPIC_SUBSTITUTION, topic)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """A rule from a fleet file's ``[[rules]]`` table: ``name``, ``topic`` (the filter) and ``action``."""
        unknown = set(data) - {"name", "topic", "action"}
        if unknown:
            raise ConfigError(f"[[rules]] takes name, topic and action, not {', '.join(sorted(unknown))}")
        if not isinstance(data.get("name"), str):
            raise ConfigError("[[rules]] needs a name: letters, digits and _")
        topic, action = data.get("topic"), data.get("action", INGEST)
        if topic is not None and not isinstance(topic, str):
            raise ConfigError(f"rule {data['name']!r}: topic must be a topic filter string")
        if not isinstance(action, str):
            raise ConfigError(f"rule {data['name']!r}: action must be 'ingest' or 'republish:<topic>'")
        return cls(data["name"], topic, action)


def default_rules(scheme: TopicScheme) -> list[Rule]:
    """The rule that feeds the ingest pipeline: the scheme's data topics, and Basic Ingest to it."""
    return [Rule(INGEST_RULE, scheme.data_filter(), INGEST)]
