"""Search backends behind one interface (base.SearchBackend): the embedded local index, the HTTP search service
and its client, and the Serper / SerpAPI web clients. See docs/tools.md."""

from openrlhf_tapo.search.base import ImageHit, SearchBackend, SearchError, TextHit

__all__ = ["ImageHit", "SearchBackend", "SearchError", "TextHit"]
