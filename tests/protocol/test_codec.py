"""The codec alone: frames in, typed requests or named errors out (no sockets)."""

from __future__ import annotations

import json

import pytest

from wsserver.errors import BadRequest, TooLarge
from wsserver.protocol import messages as m
from wsserver.protocol.codec import Limits, decode_request, peek_id

LIMITS = Limits(max_text_bytes=100, max_metadata_bytes=50)


def frame(type_: str, data: object, rid: object = "r1") -> str:
    return json.dumps({"type": type_, "id": rid, "data": data}, ensure_ascii=False)


def send(**data: object) -> str:
    return frame("message.send", {"chat_id": 1, "message_key": "k", "text": "hi", **data})


def test_codec_decodes_every_request_type():
    """Each request type of the contract decodes to its struct."""
    cases = {
        "message.send": {"chat_id": 1, "message_key": "k", "text": "x"},
        "message.edit": {"message_id": 1, "text": "x"},
        "message.delete": {"message_id": 1},
        "message.read": {"chat_id": 1, "message_id": 2},
        "typing.start": {"chat_id": 1},
        "typing.stop": {"chat_id": 1},
        "chat.subscribe": {"chat_id": 1},
        "chat.unsubscribe": {"chat_id": 1},
        "messages.history": {"chat_id": 1, "after_seq": 0, "limit": 100},
        "chats.sync": {"chats": [{"chat_id": 1, "rev": 0}]},
        "auth.refresh": {"token": "t"},
    }
    assert set(cases) == set(m.REQUEST_TYPES)
    for kind, data in cases.items():
        got_kind, rid, payload = decode_request(frame(kind, data), LIMITS)
        assert (got_kind, rid) == (kind, "r1")
        assert isinstance(payload, m.REQUEST_TYPES[kind])


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{not json", "malformed json"),
        ("[]", "Expected `object`"),
        (frame("nope.nope", {}), "unknown type `nope.nope`"),
        (send(chat_id=True), "`data.chat_id`"),
        (send(chat_id="5"), "`data.chat_id`"),
        (send(chat_id=0), "`data.chat_id`"),
        (send(chat_id=2**63), "`data.chat_id`"),
        (frame("message.send", {"chat_id": 1, "text": "x"}), "`message_key`"),
        (send(message_key=""), "`data.message_key`"),
        (send(message_key="k" * 65), "`data.message_key`"),
        (send(type="video"), "`data.type`"),
        (send(text=None), "`data.text` is required"),
        (send(text="   "), "`data.text` is required"),
        (send(type="image", text=None), "`data.attachments` is required"),
        (send(metadata=[1]), "`data.metadata`"),
        (frame("messages.history", {"chat_id": 1, "limit": 101}), "`data.limit`"),
        (frame("messages.history", {"chat_id": 1, "before_seq": 5, "after_seq": 1}), "not both"),
        (frame("chats.sync", {"chats": [{"chat_id": 1, "rev": -1}]}), "`data.chats[0].rev`"),
        (frame("message.send", {}, rid=7), "`id`"),
        (frame("message.send", {}, rid="x" * 65), "`id`"),
    ],
)
def test_codec_refuses_bad_input_naming_the_field(raw, fragment):
    with pytest.raises(BadRequest) as info:
        decode_request(raw, LIMITS)
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"text": "a\u0000b"}, "data.text"),
        ({"metadata": {"note": "x\u0000y"}}, "data.metadata.note"),
        ({"metadata": {"deep": [{"k": "\u0000"}]}}, "data.metadata.deep[0].k"),
        ({"message_key": "k\u0000"}, "data.message_key"),
    ],
)
def test_codec_refuses_nul_characters_by_field(data, field):
    with pytest.raises(BadRequest) as info:
        decode_request(send(**data), LIMITS)
    assert f"`{field}`" in info.value.message


def test_codec_refuses_lone_surrogates_and_keeps_pairs():
    lone = '{"type":"message.send","id":"r","data":{"chat_id":1,"message_key":"k","text":"\\ud800x"}}'
    with pytest.raises(BadRequest) as info:
        decode_request(lone, LIMITS)
    assert "`data.text`" in info.value.message
    pair = '{"type":"message.send","id":"r","data":{"chat_id":1,"message_key":"k","text":"\\ud83d\\ude00"}}'
    assert decode_request(pair, LIMITS)[2].text == "😀"


def test_codec_keeps_the_literal_backslash_u0000_text():
    """The six characters \\u0000 typed as text are ordinary text."""
    raw = send(text="\\u0000")
    assert decode_request(raw, LIMITS)[2].text == "\\u0000"


def test_codec_limits_text_in_utf8_bytes_and_metadata_in_json_bytes():
    assert decode_request(send(text="я" * 50), LIMITS)[2].text == "я" * 50  # 100 bytes
    with pytest.raises(TooLarge):
        decode_request(send(text="я" * 51), LIMITS)
    with pytest.raises(TooLarge):
        decode_request(frame("message.edit", {"message_id": 1, "text": "x" * 101}), LIMITS)
    with pytest.raises(TooLarge):
        decode_request(send(metadata={"k": "v" * 60}), LIMITS)


def test_codec_ignores_unknown_fields():
    _, _, payload = decode_request(send(future_field={"x": 1}), LIMITS)
    assert payload.text == "hi"


def test_peek_id_recovers_the_id_of_a_bad_frame():
    assert peek_id('{"type":"message.send","id":"c-9","data":{"chat_id":"x"}}') == "c-9"
    assert peek_id('{"id": 5}') is None
    assert peek_id("garbage") is None


def test_message_frames_share_one_encoding():
    msg = m.MessageOut(
        id=1, chat_id=2, seq=3, rev=3, user_id=4, type="text", content=m.Content(ru="Привет"),
        lang="ru", metadata={}, attachments=[], reply_to_id=None, message_key="k",
        created_at="2026-01-01T00:00:00.000000Z", edited_at=None, deleted_at=None,
    )
    ack, event = m.message_frames(msg, "c-1", duplicate=False)
    ack_obj, event_obj = json.loads(ack), json.loads(event)
    assert ack_obj["type"] == "ack" and ack_obj["id"] == "c-1"
    assert ack_obj["data"].pop("duplicate") is False
    assert ack_obj["data"] == event_obj["data"]
    assert event_obj == {"type": "chat.message.new", "data": event_obj["data"]}
    assert event_obj["data"]["content"] == {"ru": "Привет", "en": None, "zh": None}


def test_peek_id_echoes_an_overlong_id_so_the_error_can_be_matched():
    rid = "x" * 100
    with pytest.raises(BadRequest):
        decode_request(frame("message.send", {}, rid=rid), LIMITS)
    assert peek_id(frame("message.send", {}, rid=rid)) == rid


def test_peek_id_drops_an_id_that_cannot_be_echoed():
    """A lone surrogate in `id` cannot go back out as UTF-8: the error carries no id."""
    raw = '{"type":"message.send","id":"\\ud800","data":{}}'
    with pytest.raises(BadRequest):
        decode_request(raw, LIMITS)
    assert peek_id(raw) is None
