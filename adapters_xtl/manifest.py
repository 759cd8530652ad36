"""Old import path of `adapters_xtl.store.manifest`, kept until every caller imports from
`adapters_xtl.store`; then this file is deleted."""

from .store.manifest import *  # noqa: F401,F403
