"""``MemoryJournal``: the ``Journal`` contract in memory, for tests, benchmarks and embedding
without storage.

Same rules as the durable stores (``check_storable`` before anything is kept, gapless seq per
thread, open runs tracked as events are appended), and every async method is a checkpoint, as a
real store's would be. ``append_nowait`` stores at once and answers ``done`` before it returns.
Nothing survives the process.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import attrs
import trio

from .attachments import Attachment
from .errors import LimitReached, NotFound
from .journal import (TITLE_LENGTH, Done, OpenRun, accepted_of, check_storable,
                      check_storable_key, data_bytes, run_transition, track_open_runs)
from .messages import RUN_REQUESTS, USER_MESSAGE, Accepted, Event, ThreadInfo, ThreadKey
from .tree import Node, Placed
from .usage import Usage


class _MemoryThread:
    __slots__ = ("info", "events", "by_client_id", "nodes", "answers", "children", "title")

    def __init__(self, info: ThreadInfo) -> None:
        self.info = info
        self.events: list[Event] = []
        self.by_client_id: dict[str, Event] = {}
        self.nodes: dict[str, Node] = {}            # by run id, in seq order
        self.answers: dict[str, list[str]] = {}     # message id: its runs, in seq order
        self.children: dict[str | None, list[str]] = {}  # parent: its messages' first runs
        self.title: str | None = None

    def track(self, ev: Event) -> None:
        """Keep the tree's nodes up to date with a stored event (``tree.py``)."""
        transition = run_transition(ev)
        run_id = ev.run_id or ""
        if transition == "open":
            data = ev.data
            message_id = str(data.get("message_id", ""))
            if ev.event == USER_MESSAGE:
                node = Node(run_id, message_id, data.get("parent"), ev.seq, ev.seq)
                self.children.setdefault(node.parent, []).append(run_id)
                if self.title is None:
                    self.title = str(data.get("text", ""))[:TITLE_LENGTH]
            elif message_id in self.answers:
                first = self.nodes[self.answers[message_id][0]]
                node = Node(run_id, first.message_id, first.parent, first.message_seq, ev.seq)
            else:
                return  # a regenerate of a message never stored: no node (as in SQL)
            self.nodes[run_id] = node
            self.answers.setdefault(node.message_id, []).append(run_id)
        elif transition is not None and run_id in self.nodes:
            node = self.nodes[run_id]
            self.nodes[run_id] = attrs.evolve(node, started_seq=ev.seq) if transition == "start" \
                else attrs.evolve(node, ended_seq=ev.seq)

    def placed(self, node: Node) -> Placed:
        messages = self.children[node.parent]
        answers = self.answers[node.message_id]
        return Placed(node, messages.index(self.answers[node.message_id][0]), len(messages),
                      answers.index(node.run_id), len(answers))


@attrs.define
class _MemoryAttachment:
    record: Attachment
    chunks: dict[int, bytes] = attrs.Factory(dict)
    finished: bool = False


class MemoryJournal:
    """The ``Journal`` contract in memory (see the module header)."""

    def __init__(self) -> None:
        self._threads: dict[ThreadKey, _MemoryThread] = {}
        self._open_runs: dict[tuple[ThreadKey, str], bool] = {}
        self._attachments: dict[tuple[str, str], _MemoryAttachment] = {}
        self._user_bytes: dict[str, int] = {}
        self._usage: dict[tuple[str, str], Usage] = {}  # (user, period key): totals

    async def ensure_thread(self, key: ThreadKey, now: float) -> ThreadInfo:
        await trio.lowlevel.checkpoint()
        check_storable_key(key)
        t = self._threads.get(key)
        if t is None:
            t = self._threads[key] = _MemoryThread(ThreadInfo(key, 0, now, now))
        return t.info

    def append_nowait(self, events: Sequence[Event], done: Done) -> None:
        try:
            self._store(events)
        except ValueError as exc:  # Unstorable, or a seq that does not follow
            done.fail(exc)
        else:
            done.set(None)

    async def append(self, events: Sequence[Event]) -> None:
        await trio.lowlevel.checkpoint()
        self._store(events)

    def _store(self, events: Sequence[Event]) -> None:
        if not events:
            return
        check_storable(events)
        key = events[0].key
        t = self._threads.get(key)
        if t is None:
            raise ValueError(f"unknown thread {key}")
        expected = t.info.last_seq
        for ev in events:
            expected += 1
            if ev.key != key or ev.seq != expected:
                raise ValueError(f"event {ev.key}/{ev.seq} does not follow seq {expected - 1}")
        t.events.extend(events)
        for ev in events:
            cid = ev.data.get("client_msg_id") if ev.event in RUN_REQUESTS else None
            if cid is not None:
                t.by_client_id.setdefault(cid, ev)
            t.track(ev)

        track_open_runs(self._open_runs, events)
        last = events[-1]
        t.info = ThreadInfo(key, last.seq, t.info.created_at, max(t.info.updated_at, last.ts))

    async def run_events(self, key: ThreadKey, run_id: str, after: int = 0) -> list[Event]:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        return [] if t is None else [e for e in t.events[max(after, 0):] if e.run_id == run_id]

    async def read(self, key: ThreadKey, after: int, upto: int | None = None,
                   limit: int = 1000, max_bytes: int | None = None) -> list[Event]:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        if t is None:
            return []
        end = len(t.events) if upto is None else min(upto, len(t.events))
        start = max(after, 0)
        end = min(end, start + max(limit, 0))
        if max_bytes is not None and start < end:
            # Sizes are measured as read (a JSON encode of the events of this page only),
            # not as appended: appends stay as cheap as they were.
            total, cut = data_bytes(t.events[start].data), start + 1  # the first always
            while cut < end:
                total += data_bytes(t.events[cut].data)
                if total > max_bytes:
                    break
                cut += 1
            end = cut
        return t.events[start:end] if start < end else []

    async def last_seq(self, key: ThreadKey) -> int:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        return t.info.last_seq if t is not None else 0

    async def find_message(self, key: ThreadKey, client_msg_id: str) -> Accepted | None:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        ev = t.by_client_id.get(client_msg_id) if t is not None else None
        return accepted_of(ev) if ev is not None else None

    async def threads(self, user_id: str) -> list[ThreadInfo]:
        await trio.lowlevel.checkpoint()
        infos = [attrs.evolve(t.info, title=t.title) for k, t in self._threads.items()
                 if k.user_id == user_id]
        return sorted(infos, key=lambda i: (i.updated_at, i.key.thread_id), reverse=True)

    async def threads_page(self, user_id: str, limit: int,
                           before: tuple[float, str] | None = None) -> list[ThreadInfo]:
        # O(the user's threads): the memory journal serves tests and embedding, not 10,000
        # threads a user; the SQL stores seek an index.
        infos = await self.threads(user_id)
        if before is not None:
            infos = [i for i in infos if (i.updated_at, i.key.thread_id) < before]
        return infos[:max(limit, 0) + 1]

    async def thread_info(self, key: ThreadKey) -> ThreadInfo | None:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        return t.info if t is not None else None

    async def delete_thread(self, key: ThreadKey) -> bool:
        await trio.lowlevel.checkpoint()
        for run in [run for run in self._open_runs if run[0] == key]:
            del self._open_runs[run]
        self._erase(lambda a: (a.record.user_id, a.record.thread_id) == (key.user_id,
                                                                          key.thread_id))
        return self._threads.pop(key, None) is not None

    async def open_runs(self, key: ThreadKey | None = None) -> list[OpenRun]:
        await trio.lowlevel.checkpoint()
        return [self._open_run(k, run_id, started)
                for (k, run_id), started in self._open_runs.items() if key is None or k == key]

    def _open_run(self, key: ThreadKey, run_id: str, started: bool) -> OpenRun:
        t = self._threads.get(key)
        node = t.nodes.get(run_id) if t is not None else None
        return OpenRun(key, run_id, started, node.seq if node else 0,
                       node.message_id if node else "")

    # -- the conversation tree --------------------------------------------------------------------

    async def node(self, key: ThreadKey, run_id: str) -> Node | None:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        return t.nodes.get(run_id) if t is not None else None

    async def message_node(self, key: ThreadKey, message_id: str) -> Node | None:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        runs = t.answers.get(message_id) if t is not None else None
        return t.nodes[runs[0]] if t is not None and runs else None

    async def newest_node(self, key: ThreadKey) -> Node | None:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        return next(reversed(t.nodes.values()), None) if t is not None else None

    async def branch(self, key: ThreadKey, run_id: str, limit: int) -> list[Node]:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        out: list[Node] = []
        node = t.nodes.get(run_id) if t is not None else None
        while node is not None and len(out) < limit:
            out.append(node)
            node = t.nodes.get(node.parent) if node.parent is not None else None  # type: ignore[union-attr]
        return out

    async def node_events(self, key: ThreadKey, nodes: Sequence[Node]) -> list[Event]:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        if t is None:
            return []
        found: dict[int, Event] = {}
        events = t.events  # seq n is events[n - 1]
        for node in nodes:
            if node.message_seq <= len(events):
                found[node.message_seq] = events[node.message_seq - 1]
            if node.ended_seq is not None:
                for ev in events[(node.started_seq or node.seq) - 1:node.ended_seq]:
                    if ev.run_id == node.run_id:
                        found[ev.seq] = ev
        return [found[seq] for seq in sorted(found)]

    async def turns(self, key: ThreadKey, after: int, limit: int) -> list[Placed]:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        if t is None:
            return []
        nodes = list(t.nodes.values())  # in seq order
        start = bisect.bisect_right([n.seq for n in nodes], after)
        return [t.placed(n) for n in nodes[start:start + max(limit, 0)]]

    # -- attachments -------------------------------------------------------------------------

    def _erase(self, which) -> int:
        gone = [k for k, a in self._attachments.items() if which(a)]
        for k in gone:
            a = self._attachments.pop(k)
            self._user_bytes[k[0]] -= sum(len(c) for c in a.chunks.values())
        return len(gone)

    async def begin_upload(self, user_id: str, attachment_id: str, name: str,
                           content_type: str, now: float) -> None:
        await trio.lowlevel.checkpoint()
        self._attachments[(user_id, attachment_id)] = _MemoryAttachment(
            Attachment(user_id, attachment_id, name, content_type, 0, "", now))

    async def write_chunk(self, user_id: str, attachment_id: str, n: int, data: bytes,
                          quota: int) -> None:
        await trio.lowlevel.checkpoint()
        found = self._attachments.get((user_id, attachment_id))
        if found is None or found.finished:
            raise ValueError(f"no upload {attachment_id} under way")
        held = self._user_bytes.get(user_id, 0)
        if held + len(data) > quota:
            raise LimitReached(f"at most {quota} bytes of attachments a user")
        self._user_bytes[user_id] = held + len(data) - len(found.chunks.get(n, b""))
        found.chunks[n] = bytes(data)

    async def finish_upload(self, user_id: str, attachment_id: str, size: int,
                            sha256: str) -> Attachment:
        await trio.lowlevel.checkpoint()
        found = self._attachments[(user_id, attachment_id)]
        found.record = attrs.evolve(found.record, size=size, sha256=sha256)
        found.finished = True
        return found.record

    async def abort_upload(self, user_id: str, attachment_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self._erase(lambda a: (a.record.user_id, a.record.attachment_id) == (
            user_id, attachment_id) and not a.finished)

    async def claim_attachments(self, user_id: str, thread_id: str,
                                attachment_ids: Sequence[str]) -> list[Attachment]:
        await trio.lowlevel.checkpoint()
        found = [self._attachments.get((user_id, a)) for a in attachment_ids]
        for a, f in zip(attachment_ids, found):
            if f is None or not f.finished or f.record.thread_id not in (None, thread_id):
                raise NotFound(f"no attachment {a} for this thread")
        for f in found:
            f.record = attrs.evolve(f.record, thread_id=thread_id)  # type: ignore[union-attr]
        return [f.record for f in found]  # type: ignore[union-attr]

    async def attachment(self, user_id: str, attachment_id: str) -> Attachment | None:
        await trio.lowlevel.checkpoint()
        found = self._attachments.get((user_id, attachment_id))
        return found.record if found is not None and found.finished else None

    async def attachment_chunks(self, user_id: str, attachment_id: str, first: int,
                                count: int) -> list[bytes]:
        await trio.lowlevel.checkpoint()
        found = self._attachments.get((user_id, attachment_id))
        if found is None or not found.finished:
            return []
        return [found.chunks[n] for n in range(first, first + count) if n in found.chunks]

    async def attachment_bytes(self, user_id: str) -> int:
        await trio.lowlevel.checkpoint()
        return self._user_bytes.get(user_id, 0)

    async def stored_attachment_bytes(self) -> int:
        await trio.lowlevel.checkpoint()
        return sum(self._user_bytes.values())

    async def sweep_attachments(self, now: float, unsent_ttl: float,
                                upload_ttl: float) -> int:
        await trio.lowlevel.checkpoint()
        return self._erase(lambda a: (
            (a.finished and a.record.thread_id is None
             and a.record.created_at < now - unsent_ttl)
            or (not a.finished and a.record.created_at < now - upload_ttl)))

    async def delete_user_attachments(self, user_id: str) -> int:
        await trio.lowlevel.checkpoint()
        return self._erase(lambda a: a.record.user_id == user_id)

    async def record_usage(self, key: ThreadKey, run_id: str, day: str, month: str,
                           usage: Usage) -> None:
        await trio.lowlevel.checkpoint()
        t = self._threads.get(key)
        node = t.nodes.get(run_id) if t is not None else None
        if node is not None:
            t.nodes[run_id] = attrs.evolve(  # type: ignore[union-attr]
                node, usage=usage if node.usage is None else node.usage + usage)
        counted = attrs.evolve(usage, model=None)  # totals count tokens, of any model
        for period in (day, month):
            total = self._usage.get((key.user_id, period))
            self._usage[key.user_id, period] = counted if total is None else total + counted

    async def usage_totals(self, user_id: str, day: str, month: str) -> tuple[Usage, Usage]:
        await trio.lowlevel.checkpoint()
        return (self._usage.get((user_id, day), Usage()),
                self._usage.get((user_id, month), Usage()))

    async def delete_user_usage(self, user_id: str) -> None:
        await trio.lowlevel.checkpoint()
        for k in [k for k in self._usage if k[0] == user_id]:
            del self._usage[k]

    def statistics(self) -> None:
        return None  # nothing to count: no transactions, no outages
