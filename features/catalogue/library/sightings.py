"""What the relationship features see: who saw which shared network, on which night or weekday.

The household graph is built from network *sightings*, never from anyone's labels, scores or
feature values (docs/invariants.md#9). A **key** is a network a chunk user's devices saw: a
Wi-Fi access point (``wifi_bssid_hash``, category connectivity) or a geohash-7 cell
(``geohash``, category location). A sighting row says: person ``p``'s devices saw key ``k`` on
the chunk user's (the **owner**'s) local night or weekday ``t``.

* A **night** is local 22:00-06:00, numbered by the local date of its evening; a **day** is
  local 09:00-17:00, Monday to Friday (Wi-Fi only: a daytime network is an access point). Both
  count from the owner's first local day of the engine's 90-day grid (``LocalGrid.day == 0``),
  so the evening before it is night ``-1``.
* A chunk user's **home networks** are the keys they saw on at least :data:`LINK_NIGHTS` nights
  of the grid, their **daytime networks** the Wi-Fi access points they saw on at least
  :data:`LINK_DAYS` weekdays: only those can link them to anyone, so other people's sightings
  are rows for those keys alone (the user's own sightings are all there).
* People are the chunk's users (``people[:n_users]``, a user's own sightings have
  ``person == owner``) and then the others who saw one of their keys, every one of them
  consented at T to ``relationships`` and to the key's category, and not withdrawn since.
* ``key_home`` / ``key_work``: whether the key may link people at night / during working
  hours: a network more than :data:`MAX_HOME_PEOPLE` / :data:`MAX_WORK_PEOPLE` consenting people
  saw (a hotel, a dormitory, a block of flats' geohash, a public hotspot) links nobody.

``features.engine.graph`` loads them for a chunk as of T; ``library/relationships.py`` computes
the family from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hearth.signals import LINK_SIGNALS, Category, signal

I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

# The residential family's night (library/residential.py) and the working hours of a weekday.
NIGHT_HOURS = (22, 23, 0, 1, 2, 3, 4, 5)
WORK_HOURS = (9, 10, 11, 12, 13, 14, 15, 16)
WORK_WEEKDAYS = (0, 1, 2, 3, 4)  # Monday to Friday
# The signals a key can be, and the category each needs consent to on both ends.
NETWORK_SIGNALS: dict[str, Category] = {name: signal(name).category for name in LINK_SIGNALS}
WIFI_SIGNAL = "wifi_bssid_hash"
# A link: co-resident on LINK_NIGHTS nights of the window on one of the user's home networks
# (a network the user saw on at least LINK_NIGHTS nights of the 90-day grid); a daytime link:
# LINK_DAYS common weekdays on one of the user's daytime networks (seen on LINK_DAYS weekdays).
LINK_NIGHTS = 4
LINK_DAYS = 3
MAX_HOME_PEOPLE = 8  # consenting people seeing a network at night beyond which it is no home
MAX_WORK_PEOPLE = 32  # ... during working hours beyond which it is a public network


@dataclass(frozen=True)
class Sightings:
    """A chunk's shared-network sightings as of T (see the module docstring)."""

    n_users: int
    owner: I64  # [R] chunk user whose key and calendar the row is in
    person: I64  # [R] index into ``people``
    key: I64  # [R] index of the key
    slot: I64  # [R] night (evening's local date) or weekday, from the owner's grid day 0
    night: Bool  # [R] night sighting; else a weekday working-hours one
    key_wifi: Bool  # [K] the key is a Wi-Fi access point (else a geohash)
    key_home: Bool  # [K] the key may link a household (night)
    key_work: Bool  # [K] the key may link coworkers (weekday working hours)
    people: tuple[str, ...]

    @classmethod
    def empty(cls, n_users: int, users: tuple[str, ...] = ()) -> Sightings:
        z = np.zeros(0, dtype=np.int64)
        b = np.zeros(0, dtype=bool)
        return cls(n_users, z, z, z, z, b, b, b, b, users)

    def link_ends(self) -> list[list[tuple[str, str]]]:
        """Per chunk user: every (other person, category) its rows hold, sorted — the people
        whose consent the user's relationship features depend on: ``relationships`` for each,
        and the category of each kind of key shared with them. A snapshot stores these, so a
        withdrawal or erasure at the other end finds and withholds what was derived from it."""
        out: list[set[tuple[str, str]]] = [set() for _ in range(self.n_users)]
        others = self.person != self.owner
        # Rows repeat each (user, person, kind of key) once per night or day seen: reduce them
        # to the distinct triples first (one code each) rather than visit every row.
        wifi = self.key_wifi[self.key[others]].astype(np.int64)
        n_people = max(len(self.people), 1)
        codes = np.unique((self.owner[others] * n_people + self.person[others]) * 2 + wifi)
        for code in codes.tolist():
            pair, is_wifi = divmod(code, 2)
            u, p = divmod(pair, n_people)
            who = self.people[p]
            kind = Category.CONNECTIVITY if is_wifi else Category.LOCATION
            out[u].add((who, Category.RELATIONSHIPS.value))
            out[u].add((who, kind.value))
        return [sorted(s) for s in out]
