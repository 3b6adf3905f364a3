"""Agents for ``threadline serve --agent tests.approval_agents:OPENAI`` in the tests: the
OpenAI-compatible agent (its endpoint from ``OPENAI_BASE_URL``, the tests' scripted model
server) with the echo agent's calculator registered as a tool that needs approval."""

from __future__ import annotations

from threadline.actors.agents import calculator
from threadline.actors.tools import ToolRegistry
from threadline.agents.openai import OpenAIAgent, OpenAIConfig

OPENAI = OpenAIAgent(OpenAIConfig("test-model", max_retries=0))

TOOLS = ToolRegistry()
TOOLS.register("calculator", calculator, timeout=5.0, needs_approval=True,
               description="Arithmetic on numbers: + - * / // % **")
