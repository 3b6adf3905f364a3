"""Agents over language models: an OpenAI-compatible agent and what it stands on.

``tool_schema``: a tool's JSON Schema and description, read from its signature and docstring.
"""
