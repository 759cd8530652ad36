"""Old import path of `adapters_xtl.store.hub` (transport) and `store.sharing` (push / pull), kept
until every caller imports from `adapters_xtl.store`; then this file is deleted."""

from .store.hub import *  # noqa: F401,F403
from .store.sharing import download_foreign, pull, push  # noqa: F401
