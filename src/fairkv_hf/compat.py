"""Differences between the supported transformers versions (5.17 to the newest), in one place.

transformers 5.24 renamed the keyword that hands a cache to ``generate`` and to the models' ``forward`` from
``past_key_values`` to ``cache``; the old name still works there but warns (FutureWarning, removal announced),
while 5.17-5.23 know only ``past_key_values`` (and would pass an unknown ``cache=`` on to the model, where it is
ignored or refused). ``cache_kwarg`` gives the keyword the installed version expects:

    model.generate(**inputs, **cache_kwarg(cache), max_new_tokens=64)
"""

from __future__ import annotations

import functools
import inspect

from transformers import GenerationMixin
from transformers.cache_utils import Cache


@functools.cache
def cache_keyword() -> str:
    """``"cache"`` where the installed transformers takes the cache under that name, else ``"past_key_values"``.

    Read once from the signature of ``GenerationMixin.prepare_inputs_for_generation``, the generic step through
    which ``generate`` hands the cache to ``forward``: it was renamed in the same release as ``generate`` and the
    models' ``forward``, and unlike a version number it is also right for development builds.
    """
    parameters = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwarg(cache: Cache) -> dict[str, Cache]:
    """``{keyword: cache}`` for ``generate(**...)`` or ``model(**...)``, with the installed version's keyword."""
    return {cache_keyword(): cache}
