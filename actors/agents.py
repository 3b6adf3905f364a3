"""The built-in ``echo`` agent and its ``calculator`` tool (PROTOCOL.md, "The built-in echo agent").

``/stream N`` writes ``1 2 ... N`` one number per ``run.write``, about ``STREAM_RATE`` numbers a
second, as a language model streams tokens: the way to watch (and benchmark) streaming without
a model. It sleeps every ``STREAM_BATCH`` numbers rather than after each one, and on the
program's ``Pacer`` (one timer for all sleepers), so that a thousand concurrent streams cost 20
wake-ups each a second, not 200 timers.

``/confirm EXPR`` is ``/calc EXPR`` whose calculator call waits for a person's approval first
(PROTOCOL.md 1.1); denied, the answer is ``"denied: " + reason``.

``/usage`` answers ``ok`` and reports ``len(text)`` input and 2 output tokens of the model
``echo`` (PROTOCOL.md 1.1), through ``Run.model_call`` as a model's agent would: budgets and
usage can be tried without a model.

``/calc EXPR`` evaluates arithmetic by walking Python's AST over a whitelist of nodes: numbers,
``+ - * / // % **`` and unary ``+ -``. Nothing is ``eval``-ed, and the operands of ``**`` and
the size of results are bounded so that ``9**9**9`` is an error rather than a hung CPU.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any, Callable

import trio

from .approval import resumable
from .engine import Run, RunContext
from .pacer import current_pacer
from .tools import ToolRegistry
from .errors import ToolDenied, ToolError

CALC_PREFIX = "/calc "
CONFIRM_PREFIX = "/confirm "  # PROTOCOL.md 1.1: /calc, its calculator call approved first
USAGE_COMMAND = "/usage"       # PROTOCOL.md 1.1: reports tokens, as a model call would
STREAM_COMMAND = re.compile(r"/stream ([1-9][0-9]{0,5})")
MAX_STREAM = 100_000         # numbers
STREAM_RATE = 200.0          # numbers per second
STREAM_BATCH = 10            # numbers written between two sleeps
MAX_EXPRESSION = 1000        # characters
MAX_EXPONENT = 10_000        # |b| in a ** b
# Integer results fit in 64 bits signed: msgpack carries no larger integer (it would go out as a
# string there and as a number over JSON), and JavaScript clients lose precision past 2**53 anyway.
MAX_INT_BITS = 63
MAX_WORK_BITS = 4096         # a power is not even computed past this size

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalcError(ToolError, ValueError):
    """An expression the calculator refuses; its message is shown to the user as is."""


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression. Raises ``CalcError`` with a readable message."""
    if len(expression) > MAX_EXPRESSION:
        raise CalcError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalcError("not an arithmetic expression") from None
    try:
        result = _eval(tree.body)
    except ZeroDivisionError:
        raise CalcError("division by zero") from None
    except OverflowError:
        raise CalcError("result too large") from None
    if isinstance(result, float):
        if not math.isfinite(result):
            raise CalcError("result too large")
        if result.is_integer() and abs(result) < 2**53:
            return int(result)  # "4/2" answers 2, as a person expects
    return result


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and \
            not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalcError(f"exponent larger than {MAX_EXPONENT}")
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int) \
                and right > 0 and left.bit_length() * right > MAX_WORK_BITS:
            raise CalcError("result too large")
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, complex):
            raise CalcError("result is not a real number")
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            raise CalcError("result too large")
        return result
    raise CalcError("only numbers and + - * / // % ** ( ) are allowed")


async def calculator(ctx: RunContext, expression: str) -> int | float:
    """The ``calculator`` tool."""
    return calculate(expression)


def echo_tools() -> ToolRegistry:
    tools = ToolRegistry()
    tools.register("calculator", calculator, timeout=5.0)
    return tools


@resumable
async def echo_agent(run: Run) -> str | None:
    """Echo the message; ``/calc EXPR`` computes it with the calculator tool; ``/stream N``
    streams ``1 2 ... N``.

    A calculator error is part of the answer, not a failed run: the run completes with the
    error's text (PROTOCOL.md has ``/calc`` always end in ``agent_completed``).
    """
    text = run.text
    confirm = text.startswith(CONFIRM_PREFIX)
    if confirm or text.startswith(CALC_PREFIX):
        if not run.resumed:  # a resumed run stored its thinking before it parked
            await run.think("calculating")
        expression = text[len(CONFIRM_PREFIX if confirm else CALC_PREFIX):]
        try:
            result = await run.call_tool("calculator", approval=True if confirm else None,
                                         expression=expression)
        except ToolDenied as exc:
            return str(exc)  # "denied: " + the reason (PROTOCOL.md)
        except ToolError as exc:
            return f"error: {exc}"
        return str(result)
    if (match := STREAM_COMMAND.fullmatch(text)) and int(match.group(1)) <= MAX_STREAM:
        await run.think("streaming")
        await stream_numbers(run, int(match.group(1)))
        return None  # completes with what was written
    if text == USAGE_COMMAND:  # PROTOCOL.md 1.1: a report, so budgets can be tried
        await run.think("counting")
        async with run.model_call("echo", provider="threadline"):
            await run.report_usage(input_tokens=len(text), output_tokens=2,
                                   cached_input_tokens=0, model="echo")
        return "ok"
    await run.think("echoing")
    # PROTOCOL.md 1.1: one line per attachment, so that they can be tried without a model.
    return text + "".join(f"\n[{a.name}, {a.size} bytes, {a.content_type}]"
                          for a in run.attachments)


async def stream_numbers(run: Run, n: int) -> None:
    """Write ``1 2 ... n``, one number per write, ``STREAM_RATE`` numbers a second."""
    pacer = current_pacer()  # one timer for every stream's sleeps, not one each (pacer.py)
    start = trio.current_time()
    for i in range(1, n + 1):
        await run.write(str(i) if i == 1 else f" {i}")
        if i % STREAM_BATCH == 0:
            await pacer.sleep_until(start + i / STREAM_RATE)
