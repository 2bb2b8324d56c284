"""The rules engine of a region, for what the ingest pipeline does not do itself.

It hears every Basic Ingest message (``$aws/rules/#``) and every message matching a republish rule's
filter. A Basic Ingest message for a rule that does not exist is counted (``rule_not_found``, AWS's
RuleNotFound metric) and goes nowhere; one for a republish rule, or a broker message matching one, is
published again on the rule's topic. Ingest rules are served by the ingest pipeline's own subscriptions
(:class:`~iotfleet.cloud.services.ingest.IngestService`); here they are only counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

from iotfleet.cloud.rules import Rule
from iotfleet.cloud.services.base import RegionService
from iotfleet.topics import BASIC_INGEST_PREFIX, filter_matches, split_basic_ingest
from iotfleet.transport.base import InboundMessage

__all__ = ["RulesService"]

REPUBLISHED_BY: Final = "iotfleet-republished-by"  # a republished message does not trigger its own rule again


class RulesService(RegionService):
    kind = "rules"

    def __init__(self, region: str, rules: Sequence[Rule]) -> None:
        super().__init__(region)
        self.rules = {rule.name: rule for rule in rules}
        self._republishing = [r for r in rules if r.republish_to is not None and r.topic_filter is not None]
        self.filters = (f"{BASIC_INGEST_PREFIX}#", *(r.topic_filter for r in self._republishing if r.topic_filter))
        self.matched: Counter[str] = Counter()  # messages each rule was triggered by
        self.rule_not_found = 0
        self.republished = 0

    def on_message(self, message: InboundMessage) -> None:
        basic = split_basic_ingest(message.topic)
        if basic is not None:
            rule = self.rules.get(basic[0])
            if rule is None:
                self.rule_not_found += 1
                return
            self._trigger(rule, basic[1], message)
            return
        by = message.property(REPUBLISHED_BY)
        for rule in self._republishing:
            if rule.name != by and rule.topic_filter is not None and filter_matches(rule.topic_filter, message.topic):
                self._trigger(rule, message.topic, message)

    def _trigger(self, rule: Rule, topic: str, message: InboundMessage) -> None:
        self.matched[rule.name] += 1
        target = rule.republish_topic(topic)
        if target is not None and self.connection is not None:
            properties = [*message.user_properties, (REPUBLISHED_BY, rule.name)]
            if self.connection.publish(target, message.payload, properties):
                self.republished += 1

    def stats(self) -> dict[str, Any]:
        return {"rules": dict(self.matched), "rule_not_found": self.rule_not_found, "republished": self.republished}
