"""Hostile variants of the documented samples, as hypothesis strategies (issue 11 §1).

Every variant starts from a sample payload (collector/adapters/<fmt>/samples) and applies one to
three mutations: type swaps, NUL and control characters, unicode, NaN/Infinity, 1e308 and
beyond, extreme and negative timestamps, deep nesting, huge strings, missing, added and
duplicate keys, broken bytes (truncation, invalid UTF-8, lone surrogates), and a few benign
value changes so that a good share of variants is stored. Payloads are serialised by hand so
that what no JSON library would write (duplicate keys, ``\\ud800``, ``1e999``) can be sent.

``POISON`` is a plausible reading value that a test can make the database refuse (a CHECK
constraint) to drive the writer's split path with mixed batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from collector.adapters.samples import Sample

POISON = 13.125  # valid for every numeric signal whose range holds it (%, °C, W, kWh, s)


@dataclass(frozen=True)
class Raw:
    """A token written into the JSON text as is."""

    text: str


@dataclass
class Obj:
    """A JSON object as a list of pairs, so that keys can repeat."""

    pairs: list[tuple[str, Any]]


Node = Any  # None | bool | int | float | str | Raw | Obj | list[Node]


def to_tree(value: Any) -> Node:
    if isinstance(value, dict):
        return Obj([(str(k), to_tree(v)) for k, v in value.items()])
    if isinstance(value, list):
        return [to_tree(v) for v in value]
    return value


def dump(node: Node) -> str:
    """JSON text of a tree (NaN/Infinity as the literals Python's json writes)."""
    if isinstance(node, Raw):
        return node.text
    if isinstance(node, Obj):
        return "{" + ",".join(f"{_string(k)}:{dump(v)}" for k, v in node.pairs) + "}"
    if isinstance(node, list):
        return "[" + ",".join(dump(v) for v in node) + "]"
    if isinstance(node, str):
        return _string(node)
    return json.dumps(node)  # None, bools, ints, floats (nan → NaN)


def _string(text: str) -> str:
    # ensure_ascii escapes lone surrogates (\udXXX) and NUL (\u0000) instead of failing.
    return json.dumps(text, ensure_ascii=True)


def _paths(node: Node, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Every node's path (indices into lists and into an object's pairs), root first."""
    out = [prefix]
    if isinstance(node, Obj):
        for i, (_, value) in enumerate(node.pairs):
            out += _paths(value, (*prefix, i))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _get(node: Node, path: tuple[int, ...]) -> Node:
    for i in path:
        node = node.pairs[i][1] if isinstance(node, Obj) else node[i]
    return node


def _set(root: Node, path: tuple[int, ...], value: Node) -> Node:
    if not path:
        return value
    parent = _get(root, path[:-1])
    i = path[-1]
    if isinstance(parent, Obj):
        parent.pairs[i] = (parent.pairs[i][0], value)
    else:
        parent[i] = value
    return root


HOSTILE_CHARS = st.sampled_from(
    ["\x00", "\x01", "\x1b", "\x7f", "\u2028", "\ufeff", "\ufffd", "é", "😀", "\ud800", "\udfff"]
)
HOSTILE_TEXT = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=10),
    st.lists(HOSTILE_CHARS, min_size=1, max_size=4).map("".join),
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=5), HOSTILE_CHARS, st.text(max_size=5)),
    st.sampled_from(["", " ", "wifi", "Online", "true", "NaN", "0", "{}", "\\u0000"]),
)
NUMBER_TOKENS = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e308",
        "-1e308",
        "1e309",
        "-1e999",
        "1e-400",
        "-0",
        "0",
        "-1",
        "9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "1.7976931348623157e308",
        "5e-324",
    ]
)
TIMESTAMPS = st.one_of(
    st.sampled_from(
        [
            -62135596800,  # 0001-01-01
            -1,
            0,
            1714557600,  # 2024-05-01: plausible
            253402300800,  # 10000-01-01
            1714557600000,  # milliseconds where seconds are expected
            2**63,
            -(2**63),
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59+14:00",
            "0001-01-01T00:00:00+14:00",
            "2024-02-30T00:00:00Z",
            "2024-05-01T25:00:00+00:00",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00-24:00",
            "2024-05-01T12:00:00\x00Z",
            "1970-01-01",
            "",
            "now",
        ]
    ),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    HOSTILE_TEXT,
    st.builds(list),  # fresh objects: later mutations write into them
    st.builds(Obj, st.builds(list)),
)


def _deep(shape: tuple[int, bool]) -> Raw:
    depth, as_list = shape
    if as_list:
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


# Strategies are built once: hypothesis validates every new strategy object, which would cost
# more than the mutation itself. Choices among a variable number of items draw from INDEX.
INDEX = st.integers(0, 2**16)
DEEP = st.tuples(st.sampled_from([10, 64, 200, 1_000, 5_000]), st.booleans()).map(_deep)
HUGE = st.sampled_from([300, 5_000, 70_000]).map(lambda n: "x" * n)
BENIGN = st.floats(0, 60, allow_nan=False, allow_infinity=False)
TREE_MUTATIONS = st.sampled_from(
    [
        "scalar",
        "text",
        "number",
        "timestamp",
        "deep",
        "huge",
        "benign",
        "benign",
        "poison",
        "drop_key",
        "dup_key",
        "add_key",
        "rename_key",
    ]
)
BYTE_MUTATIONS = st.sampled_from(["truncate", "insert", "bom", "case", "replace"])
JUNK = st.one_of(
    st.sampled_from([b"\x00", b"\xff", b"\xed\xa0\x80", b"\xc3", b"\\u0000", b" "]),
    st.binary(max_size=8),
)
TOPIC_MUTATIONS = st.sampled_from(["level", "extra", "drop"])
TOPIC_LEVEL = st.text(max_size=12)
EXTRA_LEVEL = st.sampled_from(["", "x", "+"])
TARGETS = st.sampled_from(["tree", "tree", "tree", "bytes", "topic"])
MUTATION_COUNT = st.integers(0, 3)


def _is_number(node: Node) -> bool:
    return isinstance(node, int | float) and not isinstance(node, bool)


def _mutate_tree(draw: st.DrawFn, root: Node) -> Node:
    paths = _paths(root)
    path = paths[draw(INDEX) % len(paths)]
    kind = draw(TREE_MUTATIONS)
    if kind == "scalar":
        return _set(root, path, draw(SCALARS))
    if kind == "text":
        return _set(root, path, draw(HOSTILE_TEXT))
    if kind == "number":
        return _set(root, path, Raw(draw(NUMBER_TOKENS)))
    if kind == "timestamp":
        return _set(root, path, draw(TIMESTAMPS))
    if kind == "deep":
        return _set(root, path, draw(DEEP))
    if kind == "huge":
        return _set(root, path, draw(HUGE))
    if kind in ("benign", "poison"):  # a number becomes a plausible value, or the poison
        numbers = [p for p in paths if _is_number(_get(root, p))]
        if not numbers:
            return root
        return _set(
            root, numbers[draw(INDEX) % len(numbers)], POISON if kind == "poison" else draw(BENIGN)
        )
    objects = [p for p in paths if isinstance(_get(root, p), Obj)]
    if not objects:
        return _set(root, path, draw(SCALARS))
    obj = _get(root, objects[draw(INDEX) % len(objects)])
    if not obj.pairs and kind != "add_key":
        return root
    i = draw(INDEX) % max(1, len(obj.pairs))
    if kind == "drop_key":
        del obj.pairs[i]
    elif kind == "dup_key":
        obj.pairs.insert(draw(INDEX) % (len(obj.pairs) + 1), (obj.pairs[i][0], draw(SCALARS)))
    elif kind == "add_key":
        obj.pairs.append((draw(HOSTILE_TEXT), draw(SCALARS)))
    else:  # rename_key
        obj.pairs[i] = (draw(HOSTILE_TEXT), obj.pairs[i][1])
    return root


def _mutate_bytes(draw: st.DrawFn, payload: bytes) -> bytes:
    kind = draw(BYTE_MUTATIONS)
    if kind == "truncate":
        return payload[: draw(INDEX) % max(1, len(payload))]
    if kind == "insert":
        at = draw(INDEX) % (len(payload) + 1)
        return payload[:at] + draw(JUNK) + payload[at:]
    if kind == "bom":
        return b"\xef\xbb\xbf" + payload
    if kind == "case":
        return payload.swapcase()
    return draw(REPLACEMENT)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


REPLACEMENT = st.one_of(st.binary(max_size=40), HOSTILE_TEXT.map(_encode))


def _mutate_topic(draw: st.DrawFn, topic: str) -> str:
    # As the MQTT layer hands topics over: valid str, NUL already replaced (collector.mqtt).
    levels = topic.split("/")
    kind = draw(TOPIC_MUTATIONS)
    if kind == "level":
        levels[draw(INDEX) % len(levels)] = draw(TOPIC_LEVEL).replace("\x00", "\ufffd")
    elif kind == "extra":
        levels.insert(draw(INDEX) % (len(levels) + 1), draw(EXTRA_LEVEL))
    elif len(levels) > 1:
        del levels[draw(INDEX) % len(levels)]
    return "/".join(levels).encode("utf-8", "replace").decode("utf-8")


def hostile_messages(samples: list[Sample]) -> st.SearchStrategy[tuple[str, bytes]]:
    """(topic, payload): one of ``samples`` with zero to three mutations."""
    parsed: list[Node | None] = []
    for sample in samples:
        try:
            parsed.append(json.loads(sample.payload))
        except ValueError:
            parsed.append(None)  # a plain-text payload (LWT, online)

    @st.composite
    def message(draw: st.DrawFn) -> tuple[str, bytes]:
        i = draw(INDEX) % len(samples)
        topic, payload = samples[i].topic, samples[i].payload
        tree = None if parsed[i] is None else to_tree(parsed[i])  # a fresh copy to mutate
        for _ in range(draw(MUTATION_COUNT)):
            target = draw(TARGETS)
            if target == "tree" and tree is not None:
                tree = _mutate_tree(draw, tree)
                payload = dump(tree).encode("utf-8")
            elif target == "topic":
                topic = _mutate_topic(draw, topic)
            else:
                payload = _mutate_bytes(draw, payload)
                tree = None  # from now on only bytes are mutated
        return topic, payload

    return message()
