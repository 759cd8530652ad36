"""Old import path of `adapters_xtl.store.registry` (and `store.layout`), kept until every caller
imports from `adapters_xtl.store`; then this file is deleted."""

from .store.layout import *  # noqa: F401,F403
from .store.layout import check_file_name as _check_file_name  # noqa: F401
from .store.registry import *  # noqa: F401,F403
