"""Pure parts of the transport protocol: disconnect reasons."""

from iotfleet.transport.base import DisconnectReason


def test_disconnect_reasons_compare_equal_to_their_strings() -> None:
    as_strings: list[str] = [
        DisconnectReason.ACK_TIMEOUT,
        DisconnectReason.PING_TIMEOUT,
        DisconnectReason.KEEP_ALIVE_TIMEOUT,
    ]
    assert as_strings == ["ack-timeout", "ping-timeout", "0x8d"]
    assert {DisconnectReason.RESET: 1} == {"reset": 1}


def test_a_listed_code_is_its_member_and_an_unlisted_one_stays_its_hex_string() -> None:
    assert DisconnectReason.of_code(0x8E) is DisconnectReason.SESSION_TAKEN_OVER
    assert DisconnectReason.of_code(0x04) == "0x04"
    assert not isinstance(DisconnectReason.of_code(0x04), DisconnectReason)
