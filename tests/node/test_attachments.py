"""The JavaScript client's attachments (PROTOCOL.md 1.1, "Attachments") under Node against a real
server: ``client.upload`` (fetch here: progress reported once, at the end) answers the server's
record; a refused upload rejects with the server's code, message and status; ``send`` with
``attachments`` writes their ids and the ``user_message.attachments`` are in the client's state
(``Message.attachments``, ``Run.message``), also for another client that replays the thread;
``client.download`` gives the bytes back as a Blob (of their type for an image, else
``application/octet-stream``); another user can neither
download nor send them. The scenario is ``attachments`` in ``scenarios.mjs``."""

from __future__ import annotations

import base64
import hashlib

from tests.node.test_client import scenario
from tests.helpers import png
from tests.servers import serving, token




async def test_upload_send_and_the_user_message_attachments_in_the_clients_state():
    image = png(3, 2)
    csv = b"a,b\n1,2\n"
    async with serving() as server:
        seen = await scenario("attachments", server.url, token("ada"),
                              base64.b64encode(image).decode(), token("bob"))

    png_record, text_record = seen["png"], seen["text"]
    assert png_record == {"type": "attachment", "attachment_id": png_record["attachment_id"],
                          "name": "dot.png", "content_type": "image/png", "size": len(image),
                          "sha256": hashlib.sha256(image).hexdigest()}
    assert text_record == {"type": "attachment", "attachment_id": text_record["attachment_id"],
                           "name": "table.csv", "content_type": "text/csv", "size": len(csv),
                           "sha256": hashlib.sha256(csv).hexdigest()}  # a File's own name
    assert png_record["attachment_id"] != text_record["attachment_id"]
    # fetch (no XMLHttpRequest in Node): one progress report, at the end
    assert seen["progress"] == {"png": [{"loaded": len(image), "total": len(image)}],
                                "text": [{"loaded": len(csv), "total": len(csv)}]}

    for refused, status, code in ((seen["disguised"], 415, "unsupported_type"),
                                  (seen["exe"], 415, "unsupported_type"),
                                  (seen["tooLarge"], 413, "too_large")):
        assert refused["name"] == "ThreadlineError"
        assert (refused["status"], refused["code"]) == (status, code), refused
        assert refused["message"] and refused["frame"] == {
            "type": "error", "code": code, "message": refused["message"]}
    assert seen["notBlob"]["name"] == "TypeError"
    assert seen["abortedUpload"]["code"] == "aborted"
    assert seen["badType"]["name"] == "TypeError"

    listed = [{k: r[k] for k in ("attachment_id", "name", "content_type", "size")}
              for r in (png_record, text_record)]
    accepted = seen["accepted"]
    (frame, plain_frame) = seen["frames"]
    assert frame["attachments"] == [png_record["attachment_id"], text_record["attachment_id"]]
    assert "attachments" not in plain_frame  # an empty list writes none (a 1.0 frame)
    assert seen["userMessage"]["attachments"] == listed
    assert seen["messageAttachments"] == listed
    assert seen["runMessage"]["attachments"] == listed
    assert seen["replayed"] == listed  # another client of the user, from the replay
    assert seen["plainAttachments"] == []
    assert "attachments" not in seen["plainUserMessage"] or seen["plainUserMessage"]["attachments"] == []
    status, answer = seen["answer"]
    assert status == "completed"
    assert answer.startswith("look at these")
    assert f"[dot.png, {len(image)} bytes, image/png]" in answer
    assert f"[table.csv, {len(csv)} bytes, text/csv]" in answer
    assert accepted["type"] == "accepted"

    assert seen["downloaded"] == {"type": "image/png", "base64": base64.b64encode(image).decode()}
    assert seen["downloadedText"]["text"] == csv.decode()
    # Not an image: typed application/octet-stream, so that an object URL of it never renders.
    assert seen["downloadedText"]["type"] == "application/octet-stream"
    assert seen["missing"]["code"] == "not_found" and seen["missing"]["status"] == 404
    assert seen["attachmentUrl"].endswith(f"/v1/attachments/{png_record['attachment_id']}")
    assert seen["attachmentUrl"].startswith("http://")
    # another user: the id is nothing to them
    assert seen["otherDownload"]["code"] == "not_found" and seen["otherDownload"]["status"] == 404
    assert seen["otherSend"]["code"] == "not_found"
