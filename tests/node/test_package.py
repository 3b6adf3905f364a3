"""The JavaScript client as the npm package ``threadline-client`` (``transport/static/``, beside
the client.js the server serves at /v1/client.js): ``npm pack`` makes a tarball of exactly
package.json, client.js, client.d.ts and README.md; the tarball and the folder each install
offline into a fresh project, where a Node script imports the client by name and completes a
turn against a real server on loopback. Tokens (``getToken``): asked again at once on a 4001,
the client reconnecting with the new token (not after the backoff) and losing no event (join
with since) while another client wrote; refreshed before the token's exp and reconnected with
at a quiet moment (after a pending ``decide`` is answered, never while it waits); a getToken
that fails, answers no string or gives a refused token is reported and asked again; HTTP calls
use the latest token. On a Node without WebSocket, connect() says so and what to do.

The scenarios are in ``package_scenarios.mjs`` (copied into the installed project so that the
bare name resolves there). Nothing here uses the network but loopback: the package has no
dependencies, and npm runs with ``--offline`` and a cache of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import trio

from tests.node.test_client import FLAGS, NODE
from tests.servers import SECRET, http_get, serving
from threadline.transport.auth import Authenticator

HERE = Path(__file__).resolve().parent
STATIC = HERE.parents[1] / "transport" / "static"
NPM = shutil.which("npm")
PACKAGE = json.loads((STATIC / "package.json").read_text())
PYPROJECT = (HERE.parents[1] / "pyproject.toml").read_text()

if NPM is None:
    if os.environ.get("CI"):
        raise RuntimeError("npm is not installed, in CI: tests/run.sh installs Node.js")
    pytest.skip("npm is not installed", allow_module_level=True)


def npm(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    """npm offline, with a cache of its own, no audit, no fund, no update check, no scripts."""
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
    env |= {"npm_config_update_notifier": "false", "npm_config_fund": "false",
            "npm_config_audit": "false", "npm_config_cache": str(cache)}
    result = subprocess.run([NPM, *args, "--offline", "--ignore-scripts", "--no-audit", "--no-fund"],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"npm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def fresh_project(root: Path, name: str) -> Path:
    project = root / name
    project.mkdir()
    (project / "package.json").write_text(json.dumps(
        {"name": f"try-{name}", "version": "1.0.0", "private": True, "type": "module"}))
    shutil.copy(HERE / "package_scenarios.mjs", project / "package_scenarios.mjs")
    return project


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict:
    """The tarball of ``npm pack``, and two fresh projects: one with the tarball installed, one
    with the folder."""
    root = tmp_path_factory.mktemp("package")
    cache = root / "npm-cache"
    out = npm("pack", str(STATIC), "--pack-destination", str(root), "--json", cwd=root, cache=cache)
    (report,) = json.loads(out.stdout)
    tarball = root / report["filename"]
    from_tarball = fresh_project(root, "tarball")
    npm("install", str(tarball), cwd=from_tarball, cache=cache)
    from_folder = fresh_project(root, "folder")
    npm("install", str(STATIC), cwd=from_folder, cache=cache)
    return {"report": report, "tarball": tarball, "tarball_project": from_tarball,
            "folder_project": from_folder}


async def run(project: Path, name: str, url: str, *, flags: list[str] | None = None) -> dict:
    result = await trio.run_process(
        [NODE, *(FLAGS if flags is None else flags), "package_scenarios.mjs", name, url, SECRET],
        cwd=project, capture_stdout=True, capture_stderr=True, check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 0, f"{name} failed:\n{stderr}"
    return json.loads(result.stdout.decode().splitlines()[-1])


def test_the_package_json_names_the_client_its_types_and_the_python_packages_version():
    version = next(line.split('"')[1] for line in PYPROJECT.splitlines()
                   if line.startswith("version = "))
    assert PACKAGE["name"] == "threadline-client" and PACKAGE["version"] == version
    assert PACKAGE["type"] == "module" and PACKAGE["license"] == "MIT"
    assert PACKAGE["exports"]["."] == {"types": "./client.d.ts", "default": "./client.js"}
    assert PACKAGE["files"] == ["client.js", "client.d.ts", "README.md"]
    assert "dependencies" not in PACKAGE and "devDependencies" not in PACKAGE
    assert PACKAGE["engines"]["node"]


def test_the_tarball_holds_only_the_files_listed(packed):
    with tarfile.open(packed["tarball"]) as tar:
        names = sorted(tar.getnames())
    assert names == ["package/README.md", "package/client.d.ts", "package/client.js",
                     "package/package.json"]
    assert sorted(f["path"] for f in packed["report"]["files"]) == [
        "README.md", "client.d.ts", "client.js", "package.json"]
    with tarfile.open(packed["tarball"]) as tar:  # the very files the server serves
        assert tar.extractfile("package/client.js").read() == (STATIC / "client.js").read_bytes()


async def test_the_server_serves_the_client_and_not_the_packages_own_files():
    async with serving(demo=True) as server:
        status, _, body = await http_get(server, "/v1/client.js")
        assert status == 200 and body == (STATIC / "client.js").read_bytes()
        for path in ("/v1/package.json", "/v1/README.md", "/package.json", "/README.md"):
            status, _, _ = await http_get(server, path)
            assert status == 404, path


@pytest.mark.parametrize("install", ["tarball_project", "folder_project"])
async def test_imported_by_name_it_completes_a_turn(packed, install):
    project = packed[install]
    async with serving() as server:
        seen = await run(project, "turn", server.url)
    assert seen["answer"] == "hello" and seen["usage"] == "usage" and seen["errors"] == []
    assert "connect" in seen["exports"] and "ThreadlineError" in seen["exports"]
    resolved = Path(seen["resolved"].removeprefix("file://")).resolve()
    if install == "tarball_project":  # its own copy, in the project's node_modules
        assert resolved == (project / "node_modules" / "threadline-client" / "client.js").resolve()
        assert not resolved.is_relative_to(STATIC)
    else:  # npm links a folder
        assert resolved == (STATIC / "client.js").resolve()


async def test_a_4001_asks_for_a_new_token_at_once_and_no_event_is_lost(packed):
    async with serving(auth=Authenticator(secret=SECRET, leeway=0)) as server:
        seen = await run(packed["tarball_project"], "expiry", server.url)
    log = seen["log"]
    kinds = [entry[0] if entry[0] != "state" else f"{entry[1]}:{entry[2]}" for entry in log]
    # asked before connecting; the 4001 reconnects at once (delay 0) after a new token
    assert kinds[:2] == ["getToken", "open:None"], kinds
    at = kinds.index("reconnecting:4001")
    assert log[at][3] == 0, "the 4001 waited for the backoff"
    assert kinds[at + 1:] == ["getToken", "away", "open:None", "closed:None"], kinds
    assert seen["errors"] == []
    first, fresh = seen["tokens"]
    assert seen["connections"] == [first, fresh]
    joins = seen["joins"]
    assert joins[0] == [0] and len(joins) == 2 and joins[1][0] > 0
    # every event once, those written while away among them
    assert seen["seqs"] == list(range(1, len(seen["seqs"]) + 1))
    assert seen["seqs"] == seen["writerSeqs"]
    assert seen["texts"] == ["one", "while away", "after"]
    assert seen["answers"] == ["one", "after"]
    assert seen["usageAuth"] == [f"Bearer {fresh}"]


async def test_a_token_is_refreshed_before_its_exp_and_the_client_reconnects_with_it(packed):
    async with serving(auth=Authenticator(secret=SECRET, leeway=0)) as server:
        seen = await run(packed["tarball_project"], "refresh", server.url)
    states = [entry for entry in seen["log"] if entry[0] == "state"]
    assert [entry[0] for entry in seen["log"]].count("getToken") == 2
    assert all(entry[2] != 4001 for entry in states), "the server closed first"
    kinds = [entry[0] if entry[0] != "state" else entry[1] for entry in seen["log"]]
    assert kinds == ["getToken", "open", "getToken", "reconnecting", "open", "closed"]
    assert states[1] == ["state", "reconnecting", 1000, 0, "token refreshed"]
    first, fresh = seen["tokens"]
    assert seen["connections"] == [first, fresh] and seen["errors"] == []
    assert seen["joins"][0] == [0] and seen["joins"][1][0] > 0
    assert seen["seqs"] == list(range(1, len(seen["seqs"]) + 1))
    assert seen["texts"] == ["one", "two"] and seen["answers"] == ["one", "two"]
    assert seen["usageAuth"] == [f"Bearer {fresh}"]


async def test_a_refreshed_token_waits_for_a_pending_decide_before_reconnecting(packed):
    seen = await run(packed["tarball_project"], "quiet", "ws://127.0.0.1:9/v1/ws")
    assert seen["whileWaiting"] == 1, "reconnected while a decide waited for its answer"
    assert seen["answer"] == "ok"
    assert seen["closed"] == [1000, "token refreshed"]
    assert seen["sockets"] == seen["tokens"]  # one connection per token, the new one last
    assert seen["joins"] == [1, 1]  # joined again on the new connection
    assert seen["states"] == [["open", None], ["reconnecting", "token refreshed"], ["open", None],
                              ["closed", None]]


async def test_a_failing_get_token_is_reported_and_asked_again_after_the_backoff(packed):
    async with serving() as server:
        seen = await run(packed["tarball_project"], "tokenErrors", server.url)
    failed, not_a_string, refused = seen["errors"]
    assert failed == {"name": "ThreadlineError", "code": "token_failed", "isError": True,
                      "message": "getToken failed: no session yet", "cause": "no session yet"}
    assert not_a_string["code"] == "token_failed"
    assert not_a_string["message"] == "getToken answered a number, not a token (a non-empty string)"
    assert refused["code"] == "unauthorized" and "expired" in refused["message"]
    assert seen["calls"] == 4 and seen["answer"] == "hello"
    # the refused token: reconnecting (its handshake failed), then reported, then asked again
    assert seen["states"] == [["reconnecting", "token_failed"], ["reconnecting", "token_failed"],
                              ["reconnecting", None], ["open", None], ["closed", "closed"]]


NO_WEBSOCKET = ["Node >= 22", "--experimental-websocket", "`WebSocket` option", "ws"]


async def test_without_a_websocket_connect_says_so_and_what_to_do(packed):
    async with serving() as server:
        deleted = await run(packed["tarball_project"], "noWebSocket", server.url)
        plain = None
        if FLAGS:  # Node 20: without the flag it has none at all
            plain = await run(packed["tarball_project"], "noWebSocket", server.url, flags=[])
    for seen in filter(None, [deleted, plain]):
        error = seen["error"]
        assert error["name"] == "ThreadlineError" and error["isError"] and error["code"] == "no_websocket"
        node = seen["node"]
        assert error["message"].startswith(f"threadline-client: Node {node} has no global WebSocket")
        for needed in NO_WEBSOCKET:
            assert needed in error["message"], error["message"]
    assert deleted["hadGlobal"] and deleted["withOption"] == "pong"  # given as the option: it works
    if plain is not None:
        assert plain["hadGlobal"] is False and plain["withOption"] is None
