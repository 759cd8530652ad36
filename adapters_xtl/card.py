"""Old import path of `adapters_xtl.store.card`, kept until every caller imports from
`adapters_xtl.store`; then this file is deleted."""

from .store.card import *  # noqa: F401,F403
