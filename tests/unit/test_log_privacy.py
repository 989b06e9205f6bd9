"""No reply token and no event content in the log, whoever writes the record."""

from __future__ import annotations

import logging

import nio

from bot.log_privacy import PrivacyFilter, mask
from tests.support.logs import production_logging

TOKEN = "nhsnnvdclkctldtdgh3lnkuxgjix5cao"
PERSONAL = "Nom : DUPONTEL Jeanne, NIR 2 85 03 75 123 456 78"


def test_mask_reply_addresses_schema_instances_and_content_values() -> None:
    line = f"('127.0.0.1', 51722) >> b'RCPT TO:<reply+{TOKEN}@reponse.aplus.test>'"
    assert TOKEN not in mask(line) and "reply+…@reponse.aplus.test" in mask(line)
    schema = (
        "Error validating event: 'msgtype' is a required property\n\n"
        "Failed validating 'required' in schema['properties']['content']:\n"
        "    {'required': ['msgtype']}\n\n"
        f"On instance['content']:\n    {{'body': '{PERSONAL}'}}"
    )
    masked = mask(schema)
    assert "DUPONTEL" not in masked and "'msgtype' is a required property" in masked
    for rendered in (
        repr({"type": "m.room.message", "content": {"body": PERSONAL, "msgtype": "m.text"}}),
        '{"content": {"formatted_body": "<b>' + PERSONAL + '</b>"}, "type": "x"}',
        repr({"body": 'quote \' and "double" ' + PERSONAL}),
        repr({"m.new_content": [PERSONAL], "event_id": "$e"}),
    ):
        out = mask(rendered)
        assert "DUPONTEL" not in out, out
    # What is not content stays readable.
    assert "$e" in mask(repr({"m.new_content": [PERSONAL], "event_id": "$e"}))
    assert mask("sync failed (502 None: media download: Bad Gateway)") == (
        "sync failed (502 None: media download: Bad Gateway)"
    )


def test_the_filter_masks_records_of_any_logger_even_opened_to_debug() -> None:
    with production_logging("DEBUG") as buffer:
        # Someone lowers a library's level by hand: the filter still masks.
        for name in ("mail.log", "nio.events.misc", "bot.something"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        logging.getLogger("mail.log").info("%r recip: %s", ("::1", 1), f"reply+{TOKEN}@r.test")
        logging.getLogger("mail.log").debug("DATA readline: %s", PERSONAL.encode())
        logging.getLogger("nio.events.misc").warning(f"bad: On instance: {PERSONAL}")
        try:
            raise ValueError({"content": {"body": PERSONAL}})
        except ValueError:
            logging.getLogger("bot.something").exception("failed for reply+%s@x.test", TOKEN)
    text = buffer.getvalue()
    assert TOKEN not in text and "DUPONTEL" not in text, text
    assert "recip: reply+…@r.test" in text and "DATA readline: [contenu masqué]" in text
    assert "Traceback" in text and "ValueError" in text  # the traceback is kept, masked


def test_nio_schema_warning_of_a_decrypted_event_writes_no_content() -> None:
    # The event nio's Olm machine hands to parse_decrypted_event after decryption.
    event = {
        "type": "m.room.message",
        "content": {"body": PERSONAL},  # no msgtype: fails nio's schema
        "event_id": "$abc",
        "sender": "@intrus:hs.test",
        "origin_server_ts": 1,
        "room_id": "!r:hs.test",
    }
    with production_logging("DEBUG") as buffer:
        parsed = nio.Event.parse_decrypted_event(event)
    assert isinstance(parsed, nio.BadEvent | nio.UnknownBadEvent)
    assert "DUPONTEL" not in buffer.getvalue() and "85 03 75" not in buffer.getvalue()


def test_every_root_handler_gets_the_filter() -> None:
    root = logging.getLogger()
    extra = logging.StreamHandler()
    root.addHandler(extra)
    try:
        with production_logging("INFO"):
            assert all(any(isinstance(f, PrivacyFilter) for f in h.filters) for h in root.handlers)
            assert logging.getLogger("mail.log").level == logging.WARNING
            assert logging.getLogger("nio.events").level == logging.ERROR
    finally:
        root.removeHandler(extra)
