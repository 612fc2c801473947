"""The public attribute vocabulary: one source of truth for class names.

These names are what the served `manipulator` accepts (`attribute="color", value="red"`), what
`manifest.csv` holds, and what every report prints. Order matters: a class index anywhere in the
project is the position in these tuples.
"""

ATTRIBUTE_TYPES = ("shape", "color", "pattern")
NUM_TYPES = len(ATTRIBUTE_TYPES)

CLASSES = {
    "shape": (
        "t-shirt",
        "shirt",
        "sweater",
        "hoodie",
        "dress",
        "skirt",
        "trousers",
        "shorts",
        "jacket",
        "coat",
    ),
    "color": (
        "black",
        "white",
        "grey",
        "red",
        "pink",
        "yellow",
        "green",
        "blue",
        "navy",
        "brown",
    ),
    "pattern": (
        "solid",
        "striped",
        "pinstriped",
        "checked",
        "dotted",
        "diagonal",
        "zigzag",
        "floral",
        "camouflage",
        "colorblock",
    ),
}

NUM_CLASSES = {a: len(c) for a, c in CLASSES.items()}

# Label value used for "attribute label missing" in integer label arrays (manifest: empty field).
MISSING = -1


def class_index(attribute: str, value: str) -> int:
    """Returns the index of `value` among the classes of `attribute`.

    Raises:
        ValueError: naming the bad attribute or value and the accepted ones.
    """
    if attribute not in CLASSES:
        raise ValueError(
            f"Unknown attribute. Received: attribute={attribute!r}; "
            f"expected one of {list(ATTRIBUTE_TYPES)}"
        )
    try:
        return CLASSES[attribute].index(value)
    except ValueError:
        raise ValueError(
            f"Unknown {attribute} value. Received: value={value!r}; "
            f"expected one of {list(CLASSES[attribute])}"
        ) from None


def attribute_index(attribute: str) -> int:
    """Returns the position of `attribute` in ATTRIBUTE_TYPES (ValueError if unknown)."""
    if attribute not in ATTRIBUTE_TYPES:
        raise ValueError(
            f"Unknown attribute. Received: attribute={attribute!r}; "
            f"expected one of {list(ATTRIBUTE_TYPES)}"
        )
    return ATTRIBUTE_TYPES.index(attribute)
