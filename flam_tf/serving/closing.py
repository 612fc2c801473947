"""`Closing`: `with` support for the objects that hold a connection (FlamClient, CatalogIndex)."""


class Closing:
    """Mixin: `with obj as o:` gives `obj` and calls `obj.close()` on leaving the block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
