"""Old import path of `adapters_xtl.store.interop`, `store.convert` and `store.sharing.import_module`,
kept until every caller imports from `adapters_xtl.store`; then this file is deleted."""

from .store.convert import *  # noqa: F401,F403
from .store.interop import *  # noqa: F401,F403
from .store.sharing import import_module  # noqa: F401
