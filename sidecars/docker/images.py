"""What the engine knows of the images pods use, cached between image events.

Contracts: `get` answers None for an image the engine does not have (images are never pulled
here) and raises `EngineError` for anything else; a cached answer stays until `clear` (the event
stream calls it on every image event that may change what a tag means) or `forget` (a create
found the image gone).
"""

from __future__ import annotations

from sidecars.docker import bodies
from sidecars.docker.engine import Engine, EngineError


class ImageCache:
    """Inspected images by reference."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._images: dict[str, bodies.ImageInfo] = {}

    async def get(self, ref: str) -> bodies.ImageInfo | None:
        cached = self._images.get(ref)
        if cached is not None:
            return cached
        try:
            info = bodies.ImageInfo.from_inspect(await self._engine.inspect_image(ref))
        except EngineError as exc:
            if exc.not_found:
                return None
            raise
        self._images[ref] = info
        return info

    def forget(self, ref: str) -> None:
        self._images.pop(ref, None)

    def clear(self) -> None:
        self._images.clear()
