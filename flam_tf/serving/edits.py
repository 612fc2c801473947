"""The manipulator signature's edit parser: `attribute`/`value` strings -> vocabulary indices.

A row lists up to `sig.MAX_EDITS` edits joined by `sig.EDIT_SEPARATOR` ("color;pattern" with
"red;striped"); an unknown attribute or value fails with INVALID_ARGUMENT naming it and the
accepted ones.
"""

from typing import Sequence

import numpy as np
import tensorflow as tf

from flam_tf import vocabulary
from flam_tf.serving import signatures as sig
from flam_tf.serving.preprocessing import quote


def _listing(names: Sequence[str]) -> str:
    # No quote characters: tf.Assert would print them escaped.
    return "[" + ", ".join(names) + "]"


class EditParser(tf.Module):
    """Maps `attribute`/`value` strings to vocabulary indices with tracked StaticHashTables.

    An ExportArchive using it must track `attribute_table`, `value_table` and `accepted_table`.
    """

    def __init__(self):
        super().__init__(name="edit_parser")
        attrs = list(vocabulary.ATTRIBUTE_TYPES)
        pairs = [(f"{a}={v}", i) for a in attrs for i, v in enumerate(vocabulary.CLASSES[a])]
        table = lambda keys, values, default: tf.lookup.StaticHashTable(  # noqa: E731
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values)), default
        )
        self.attribute_table = table(attrs, np.arange(len(attrs), dtype=np.int32), -1)
        self.value_table = table(
            [k for k, _ in pairs], np.array([i for _, i in pairs], np.int32), -1
        )
        self.accepted_table = table(attrs, [_listing(vocabulary.CLASSES[a]) for a in attrs], "")

    def parse(self, attribute, value):
        """string [B], string [B] -> (attribute_idx, value_idx, mask), each [B, MAX_EDITS].

        Fails with INVALID_ARGUMENT naming the first bad attribute or value and the accepted ones.
        """
        attrs = tf.strings.split(attribute, sig.EDIT_SEPARATOR)
        values = tf.strings.split(value, sig.EDIT_SEPARATOR)
        count = attrs.row_lengths()
        first = lambda x, bad: tf.strings.reduce_join(tf.boolean_mask(x, bad)[:1])  # noqa: E731
        same_count = tf.equal(count, values.row_lengths())
        checks = [
            tf.debugging.Assert(
                tf.reduce_all(same_count),
                [
                    tf.strings.join(
                        [
                            f"attribute and value must list as many edits (separated by "
                            f"{sig.EDIT_SEPARATOR}). Received: attribute=",
                            quote(first(attribute, ~same_count)),
                            ", value=",
                            quote(first(value, ~same_count)),
                        ]
                    )
                ],
            ),
            tf.debugging.Assert(
                tf.reduce_all(count <= sig.MAX_EDITS),
                [
                    tf.strings.join(
                        [
                            f"At most {sig.MAX_EDITS} edits per row. Received: attribute=",
                            quote(first(attribute, count > sig.MAX_EDITS)),
                        ]
                    )
                ],
            ),
        ]
        with tf.control_dependencies(checks):
            attrs = attrs.to_tensor("", shape=[None, sig.MAX_EDITS])
            values = values.to_tensor("", shape=[None, sig.MAX_EDITS])
        mask = tf.sequence_mask(count, sig.MAX_EDITS)
        attribute_idx = self.attribute_table.lookup(attrs)
        bad_attr = mask & (attribute_idx < 0)
        value_idx = self.value_table.lookup(tf.strings.join([attrs, values], "="))
        bad_value = mask & ~bad_attr & (value_idx < 0)
        bad_value_attr = first(attrs, bad_value)
        checks = [
            tf.debugging.Assert(
                ~tf.reduce_any(bad_attr),
                [
                    tf.strings.join(
                        [
                            "Unknown attribute. Received: attribute=",
                            quote(first(attrs, bad_attr)),
                            f"; expected one of {_listing(vocabulary.ATTRIBUTE_TYPES)}",
                        ]
                    )
                ],
            ),
            tf.debugging.Assert(
                ~tf.reduce_any(bad_value),
                [
                    tf.strings.join(
                        [
                            "Unknown ",
                            bad_value_attr,
                            " value. Received: value=",
                            quote(first(values, bad_value)),
                            "; expected one of ",
                            self.accepted_table.lookup(bad_value_attr),
                        ]
                    )
                ],
            ),
        ]
        with tf.control_dependencies(checks):  # indices stay in range even if an assert is late
            return (
                tf.where(mask, attribute_idx, 0),
                tf.where(mask, value_idx, 0),
                tf.identity(mask),
            )
