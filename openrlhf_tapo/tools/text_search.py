"""text_search {"query": str}: the top-k passages (title, url, text) for a query."""

from __future__ import annotations

from openrlhf_tapo.search.base import SearchBackend
from openrlhf_tapo.tools.base import Tool, ToolArgumentError, ToolContext, ToolResult, check_keys
from openrlhf_tapo.tools.config import ToolsConfig


class TextSearchTool(Tool):
    name = "text_search"
    description = (
        "Search the web (text) for a query. Returns the top passages, each with its title and URL. "
        "Use it to look up facts, names or entities you have identified."
    )

    needs_backend = True

    def __init__(self, *, backend: SearchBackend, config: ToolsConfig):
        self.backend = backend
        self.config = config.text_search

    def parameters_schema(self) -> dict:
        return {
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "description": f"The search query (at most {self.config.max_query_chars} characters).",
                }
            },
            "required": ["query"],
            "additionalProperties": False,
        }

    def canonicalize(self, arguments: dict) -> dict:
        """Strip and collapse whitespace; case is kept (it is meaningful to web engines)."""
        check_keys(arguments, self.name, ("query",))
        query = arguments["query"]
        if not isinstance(query, str):
            raise ToolArgumentError(f"text_search: 'query' must be a string, got {type(query).__name__}")
        query = " ".join(query.split())
        if not query:
            raise ToolArgumentError("text_search: 'query' is empty; give the words to search for")
        if len(query) > self.config.max_query_chars:
            raise ToolArgumentError(
                f"text_search: 'query' has {len(query)} characters, the limit is {self.config.max_query_chars}; "
                "shorten it"
            )
        return {"query": query}

    async def execute(self, params: dict, ctx: ToolContext) -> ToolResult:
        # Cut here too: a backend that returns more than asked must not bloat the observation or the cache row.
        hits = (await self.backend.text_search(params["query"], self.config.top_k))[: self.config.top_k]
        if not hits:
            return ToolResult(text=f'No results for "{params["query"]}".')
        limit = self.config.max_passage_chars
        blocks = []
        for i, hit in enumerate(hits, 1):
            body = " ".join(hit.text[: 2 * limit].split())  # collapse whitespace; no more text than can be shown
            if len(body) > limit:
                body = body[:limit].rstrip() + " ..."
            url = f"URL: {hit.url}\n" if hit.url else ""  # local corpora may have none
            blocks.append(f"{i}. {hit.title}\n{url}{body}")
        return ToolResult(text="\n\n".join(blocks))
