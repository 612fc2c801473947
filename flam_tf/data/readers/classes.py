"""Mapping a data set's own class names (or codes) onto the vocabulary's classes: the field and
class tables, name normalisation, and keeping the top-N classes of each attribute type."""

import re
from typing import Dict, Mapping, Optional

from absl import logging

from flam_tf import vocabulary


def normalize_class_name(name: str) -> str:
    """Lower-cased letters and digits only: 'T-Shirt', 't_shirt' and 'tshirt' all match."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def resolve_field_map(
    default: Mapping[str, Optional[str]], override: Optional[Mapping[str, Optional[str]]]
) -> Dict[str, Optional[str]]:
    """Merges a source field -> attribute type table with user overrides (None = field unused).

    Raises:
        ValueError: a target that is not an attribute type, or a type claimed by two fields.
    """
    merged = {**default, **(override or {})}
    claimed: Dict[str, str] = {}
    for field, attribute in merged.items():
        if attribute is None:
            continue
        if attribute not in vocabulary.ATTRIBUTE_TYPES:
            raise ValueError(
                f"Unknown attribute type for source field {field!r}. Received: "
                f"{attribute!r}; expected one of {list(vocabulary.ATTRIBUTE_TYPES)} "
                "or None"
            )
        if attribute in claimed:
            raise ValueError(
                f"Source fields {claimed[attribute]!r} and {field!r} both map to "
                f"attribute type {attribute!r}"
            )
        claimed[attribute] = field
    return merged


def resolve_class_table(
    default: Mapping[str, Mapping[str, str]], override: Optional[Mapping[str, Mapping[str, str]]]
) -> Dict[str, Dict[str, str]]:
    """Merges per-type {source class: canonical class} tables; keys are normalized.

    Raises:
        ValueError: an unknown attribute type or a target that is not a canonical class name.
    """
    tables: Dict[str, Dict[str, str]] = {a: {} for a in vocabulary.ATTRIBUTE_TYPES}
    for table in (default, override or {}):
        for attribute, entries in table.items():
            if attribute not in tables:
                raise ValueError(
                    f"Unknown attribute type in class table. Received: {attribute!r}"
                    f"; expected one of {list(vocabulary.ATTRIBUTE_TYPES)}"
                )
            for source_class, canonical in entries.items():
                vocabulary.class_index(attribute, canonical)  # ValueError naming a bad target
                tables[attribute][normalize_class_name(source_class)] = canonical
    return tables


def map_top_classes(
    counts: Mapping[str, int],
    attribute: str,
    top_n: int,
    table: Mapping[str, str],
    fallback: bool = True,
) -> Dict[str, str]:
    """Keeps the `top_n` most frequent source classes and maps each onto a canonical class.

    A source class takes, in order of preference: its entry in `table` (normalized names), the
    canonical class of the same normalized name. Each canonical class is used once; the more
    frequent source class wins a contested one. The k-th most frequent source class left unmatched
    then takes the k-th still unused canonical class (in vocabulary order), and the mapping is
    logged so the user sees it. With `fallback=False` (a source whose class names are known) an
    unmatched class is never given a class: its labels become missing, and the top-N are chosen
    among the classes that do match.

    Args:
        counts: source class -> number of images with that label.
        attribute: the attribute type ("shape", "color" or "pattern").
        top_n: how many classes to keep, 1 to the vocabulary size.
        table: normalized source class name -> canonical class.
        fallback: map unmatched top-N classes onto unused canonical classes (for sources whose
            classes are anonymous ids); False leaves them out (their labels become missing).

    Returns:
        {source class: canonical class} for the kept classes; every other class becomes missing.
    """
    canonical = vocabulary.CLASSES[attribute]
    if not 1 <= top_n <= len(canonical):
        raise ValueError(f"top_n must be in [1, {len(canonical)}]. Received: top_n={top_n}")
    by_name = {normalize_class_name(c): c for c in canonical}

    def target_of(source_class):
        key = normalize_class_name(source_class)
        return table.get(key, by_name.get(key))

    candidates = counts if fallback else [c for c in counts if target_of(c) is not None]
    if not fallback:
        for source_class in sorted(set(counts) - set(candidates)):
            logging.warning(
                "%s class %r has no canonical match; its %d labels set to missing",
                attribute,
                source_class,
                counts[source_class],
            )
    top = sorted(candidates, key=lambda c: (-counts[c], c))[:top_n]  # ties broken by name
    mapping: Dict[str, str] = {}
    unmatched = []
    for source_class in top:
        target = target_of(source_class)
        if target is not None and target not in mapping.values():
            mapping[source_class] = target
        else:
            unmatched.append(source_class)
    if not fallback:
        for source_class in unmatched:
            logging.warning(
                "%s class %r maps onto %r, already taken by a more frequent class; "
                "its labels set to missing",
                attribute,
                source_class,
                target_of(source_class),
            )
        top = [c for c in top if c in mapping]
        unmatched = []
    unused = [c for c in canonical if c not in mapping.values()]
    for source_class, target in zip(unmatched, unused):
        mapping[source_class] = target
        logging.warning(
            "%s class %r has no canonical match; mapped onto unused class %r",
            attribute,
            source_class,
            target,
        )
    logging.info(
        "%s top-%d classes (source -> canonical, images): %s",
        attribute,
        top_n,
        ", ".join(f"{s} -> {mapping[s]} ({counts[s]})" for s in top),
    )
    return {s: mapping[s] for s in top}
