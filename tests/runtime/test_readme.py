"""The README and the docs/ pages: their examples run as written and print what they say, the
README's first screen holds the two commands and the tour in 60 lines, and every page it links
exists."""

import os
import re
import subprocess
import sys

import trio
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
DOCS = README.parent / "docs"


def block_after(marker: str, page: Path = README) -> str:
    text = page.read_text()
    start = text.index(marker)
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match, f"no python block after {marker!r}"
    return match.group(1)


def run_block(marker: str, page: Path = README) -> list[str]:
    """Run the python block after ``marker`` in ``page``; its output lines."""
    proc = subprocess.run([sys.executable, "-c", block_after(marker, page)], capture_output=True,
                          text=True, timeout=60, cwd=README.parent)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_embedding_example_runs_as_documented():
    lines = run_block("<!-- example: embedding", DOCS / "embedding.md")
    assert [line.split()[1] for line in lines[:6]] == [
        "user_message", "agent_started", "agent_thinking", "tool_executing", "tool_completed",
        "agent_completed"]
    assert [line.split()[0] for line in lines[:6]] == ["1", "2", "3", "4", "5", "6"]
    assert "'result': 3" in lines[4]
    assert lines[5].endswith("{'text': '3 words'}")
    assert lines[6] == "['main']"


def test_the_tour_example_runs_as_documented():
    lines = run_block("<!-- example: tour")
    assert [line.split()[:2] for line in lines] == [
        ["1", "user_message"], ["2", "agent_started"], ["3", "agent_thinking"],
        ["4", "tool_executing"], ["5", "tool_completed"], ["6", "agent_completed"]]
    assert lines[-1] == "6 agent_completed {'text': '42'}"


def test_the_readmes_first_screen_is_the_commands_and_the_tour_in_60_lines():
    first = README.read_text().split("\n## Read next", 1)[0].rstrip("\n").splitlines()
    assert len(first) <= 60, len(first)
    assert "<!-- example: tour" in "\n".join(first)


def test_every_page_the_readme_and_the_docs_link_exists():
    for page in (README, *DOCS.glob("*.md")):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)|src=\"([^\"]+)\"", page.read_text()):
            path = next(t for t in target if t)
            if re.match(r"https?:|mailto:", path):
                continue
            assert (page.parent / path).exists(), f"{page.name} links {path}, which is not there"


def test_serving_example_runs_as_documented():
    lines = run_block("<!-- example: serving", DOCS / "clients.md")
    assert re.fullmatch(r"listening on ws://127\.0\.0\.1:\d+/v1/ws", lines[0])
    assert lines[1] == "42"


async def test_language_model_example_runs_as_documented():
    from tests.llm_server import Answer, ToolCall, open_llm_server

    async with open_llm_server() as llm:
        llm.script(Answer(calls=(ToolCall("weather", {"city": "Oslo"}),)),
                   Answer(pieces=("Clear", " and 21 C in Oslo.")))
        env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test"}
        proc = await trio.run_process(
            [sys.executable, "-c", block_after("<!-- example: language model",
                                               DOCS / "language-models.md")],
            capture_stdout=True, capture_stderr=True, check=False, env=env, cwd=README.parent)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == [
        "tool: {'city': 'Oslo', 'sky': 'clear', 'celsius': 21}",
        "piece: Clear and 21 C in Oslo.",  # the two pieces came within 50 ms: one delta
        "agent_completed Clear and 21 C in Oslo.",
        # Two model calls (the tool's round, then the answer): the scripted server's tokens,
        # 10 of the prompt each and a token per piece or call, summed by the run.
        "usage: {'input_tokens': 20, 'output_tokens': 3, 'cached_input_tokens': 0, "
        "'model': 'gpt-4o-mini'}"]
    assert llm.requests[0].body["tools"][0]["function"]["description"] == \
        "Today's weather in a city."


def test_readme_starts_with_the_two_commands():
    first_block = README.read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines() == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/threadline serve --demo",
        "bash tests/run.sh",
    ]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "bash tests/run.sh" in ci


def test_the_protocol_copy_is_the_contract():
    """transport/PROTOCOL.md holds the shared contract to the letter: every line of it, in its
    order. Ours may add lines (decisions the contract leaves open), never change one."""
    shared = README.parent.parent / "shared" / "PROTOCOL.md"
    ours = (README.parent / "transport" / "PROTOCOL.md").read_text()
    assert ours.startswith("# threadline wire protocol, version 1")
    if not shared.exists():  # beside every clone this project is developed and tested in
        return
    lines = iter(ours.splitlines())
    for line in shared.read_text().splitlines():
        if line.strip():
            assert any(mine == line for mine in lines), f"missing or out of order: {line!r}"


def test_the_architecture_document_names_every_module():
    root = README.parent
    text = (root / "docs" / "architecture.md").read_text()
    modules = [path for top in ("actors", "transport", "runtime") for path in
               (root / top).rglob("*.py") if not path.name.startswith("__")]
    assert modules
    assert [str(p.relative_to(root)) for p in modules if f"`{p.name}`" not in text] == []
