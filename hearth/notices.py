"""The privacy notice a user consents to, one text per data category (one toggle each).

A grant records the notice version it was given under (``hearth.ledger.CURRENT_NOTICE_VERSION``);
these are the texts of that version. Each category is its own toggle: nothing grants one
category by granting another. ``relationships`` gets its own text because, unlike the others,
consenting to it lets a person's data shape *another* person's features
(docs/invariants.md#9); ``location`` has its own toggle as sensitive personal information
(PIPL Art. 28). ``python -m collector consent notice`` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

from hearth.ledger import CURRENT_NOTICE_VERSION
from hearth.signals import Category


@dataclass(frozen=True, slots=True)
class Notice:
    category: Category
    version: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {"category": self.category.value, "notice_version": self.version, "text": self.text}


_TEXTS: dict[Category, str] = {
    Category.LOCATION: (
        "Where your phone is, stored only as an area of about 150 m (a geohash), and when you "
        "enter or leave your home area. Used to measure how settled your home is. Sensitive "
        "personal information: asked for separately, and you can withdraw it at any time."
    ),
    Category.CONNECTIVITY: (
        "Which kind of network your devices use, whether your router and devices are online, "
        "and your Wi-Fi network names and access points as keyed codes that cannot be read "
        "back. Used to measure how reliably your household is connected."
    ),
    Category.DEVICE_HEALTH: (
        "Battery level, charging, uptime and a keyed code of your SIM card. Used to measure how "
        "you look after your phone and how often it changes."
    ),
    Category.ENERGY: (
        "Power and energy your smart plugs measure. Used to measure how regular your "
        "household's energy use is."
    ),
    Category.PRESENCE: (
        "Door and motion sensors: open/closed and movement, no images or sound. Used to "
        "measure how regular your daily routine is."
    ),
    Category.CLIMATE: (
        "Temperature, humidity and thermostat settings. Used to measure how steadily your "
        "home is run."
    ),
    Category.USAGE: (
        "When your phone's screen is on or off (no content, no apps). Used to measure how "
        "regular your day is."
    ),
    Category.RELATIONSHIPS: (
        "Linking you with other Hearth users who share your home network or your home area "
        "at night, or a network during working hours, on several days. Only the fact and "
        "pattern of sharing is used (how many people, how stable the household is); never "
        "anyone's repayment, scores or other features. A link needs this consent from both "
        "people, and their consent to the category it comes from (connectivity for a shared "
        "network, location for a shared home area). Your data then shapes the features of "
        "the people you are linked with, and theirs yours. Withdrawing it removes you from "
        "every other user's features from then on."
    ),
}


def notice(category: Category) -> Notice:
    """The current notice text of one category."""
    return Notice(category, CURRENT_NOTICE_VERSION, _TEXTS[category])


def notices() -> list[Notice]:
    """Every category's current notice, in the catalogue's order."""
    return [notice(c) for c in Category]
