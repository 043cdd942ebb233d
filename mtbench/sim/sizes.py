"""Entry sizes live in `mtbench.cache.sizes` (one size function for both planes); re-exported here."""

from mtbench.cache.sizes import DEFAULT_PAGE_TOKENS, EntrySizer

__all__ = ["DEFAULT_PAGE_TOKENS", "EntrySizer"]
