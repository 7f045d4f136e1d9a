"""Pure logic of the streaming server: SPDY framing, header compression, tokens, negotiation, status, validation."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cri_shim.config import load
from cri_shim.errors import ConfigError, InvalidArgument, ResourceExhausted
from cri_shim.streaming import spdy
from cri_shim.streaming.remotecommand import (Outcome, expected_spdy_streams, exit_status, parse_resizes,
                                              status_message)
from cri_shim.streaming.requests import validate_attach, validate_exec, validate_port_forward
from cri_shim.streaming.server import HttpError, _negotiate
from cri_shim.streaming.tokens import TokenCache

# ---------------------------------------------------------------- SPDY


def test_dictionary_is_the_spdy3_one() -> None:
    # Length and digest of the dictionary in the SPDY/3 draft (as moby/spdystream ships it).
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == \
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"


def test_header_block_needs_the_dictionary_and_names_are_lowercased() -> None:
    comp = spdy.HeaderCompressor()
    frame = spdy.encode_syn_stream(comp, 1, (("streamType", "stdin"), ("Port", "80")))
    block = frame[18:]
    with pytest.raises(zlib.error):
        zlib.decompressobj().decompress(block)  # primed with the dictionary: a plain inflater cannot read it
    (parsed,) = spdy.FrameParser().feed(frame)
    assert parsed == spdy.SynStream(1, 0, 0, 0, (("streamtype", "stdin"), ("port", "80")))
    assert spdy.header(parsed.headers, "STREAMTYPE") == "stdin"


def test_one_compression_context_per_direction_spans_frames() -> None:
    comp, parser = spdy.HeaderCompressor(), spdy.FrameParser()
    frames = [spdy.encode_syn_stream(comp, i, (("streamtype", "error"), ("requestid", str(i))))
              for i in range(1, 40, 2)]
    # Later frames refer back to earlier ones, so they shrink; a fresh parser must see them in order.
    assert len(frames[-1]) < len(frames[0])
    parsed = parser.feed(b"".join(frames))
    assert [spdy.header(f.headers, "requestID") for f in parsed if isinstance(f, spdy.SynStream)] == \
        [str(i) for i in range(1, 40, 2)]
    with pytest.raises(spdy.FrameError):
        spdy.FrameParser().feed(frames[-1])  # out of context


def test_frames_round_trip_split_at_every_byte() -> None:
    comp = spdy.HeaderCompressor()
    wire = (spdy.encode_syn_reply(comp, 1) + spdy.encode_data(1, b"hello") + spdy.encode_data(1, b"", fin=True) +
            spdy.encode_rst(3, spdy.RstStatus.CANCEL) + spdy.encode_ping(9) + spdy.encode_goaway(5, 0))
    want = [spdy.SynReply(1, 0, ()), spdy.Data(1, 0, b"hello"), spdy.Data(1, spdy.FLAG_FIN, b""),
            spdy.RstStream(3, 5), spdy.Ping(9), spdy.GoAway(5, 0)]
    parser = spdy.FrameParser()
    got: list[spdy.Frame] = []
    for i in range(len(wire)):
        got += parser.feed(wire[i:i + 1])
    assert got == want


def test_settings_and_window_update_are_ignored() -> None:
    settings_frame = b"\x80\x03\x00\x04\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x07\x00\x01\x00\x00"
    window = b"\x80\x03\x00\x09\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x10\x00"
    assert spdy.FrameParser().feed(settings_frame + window) == [spdy.Ignored(4), spdy.Ignored(9)]


def test_oversized_header_block_is_a_frame_error() -> None:
    comp = spdy.HeaderCompressor()
    frame = spdy.encode_syn_stream(comp, 1, (("x", "a" * (spdy.MAX_HEADER_BLOCK + 10)),))
    with pytest.raises(spdy.FrameError, match="larger than"):
        spdy.FrameParser().feed(frame)


def test_frame_longer_than_the_limit_is_refused_before_buffering() -> None:
    with pytest.raises(spdy.FrameError, match="exceeds"):
        spdy.FrameParser(max_payload=1024).feed(b"\x00\x00\x00\x01\x00\x01\x00\x00")


@pytest.mark.parametrize("wire, reason", [
    (b"\x80\x02\x00\x01\x00\x00\x00\x00", "version"),
    (b"\x00\x00\x00\x00\x00\x00\x00\x01x", "stream 0"),
    (b"\x80\x03\x00\x06\x00\x00\x00\x03abc", "PING"),
    (b"\x80\x03\x00\x03\x00\x00\x00\x04abcd", "RST_STREAM"),
])
def test_malformed_frames_name_the_problem(wire: bytes, reason: str) -> None:
    with pytest.raises(spdy.FrameError, match=reason):
        spdy.FrameParser().feed(wire)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises_anything_but_frame_error(data: bytes) -> None:
    try:
        spdy.FrameParser().feed(data)
    except spdy.FrameError:
        pass


# ---------------------------------------------------------------- tokens


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_is_8_url_safe_chars_and_single_use() -> None:
    cache: TokenCache[str] = TokenCache()
    token = cache.insert("req")
    assert len(token) == 8 and all(c.isalnum() or c in "-_" for c in token)
    assert cache.consume(token) == "req"
    assert cache.consume(token) is None


def test_token_expires_after_its_ttl() -> None:
    clock = FakeClock()
    cache: TokenCache[str] = TokenCache(ttl=60, clock=clock)
    early, late = cache.insert("a"), cache.insert("b")
    clock.now += 59.9
    assert cache.consume(early) == "a"
    clock.now += 0.2
    assert cache.consume(late) is None


def test_tokens_in_flight_are_bounded_and_expiry_frees_room() -> None:
    clock = FakeClock()
    cache: TokenCache[int] = TokenCache(ttl=60, capacity=3, clock=clock)
    for i in range(3):
        cache.insert(i)
    with pytest.raises(ResourceExhausted, match="too many streaming requests"):
        cache.insert(4)
    clock.now += 61
    cache.insert(5)
    assert len(cache) == 1


# ---------------------------------------------------------------- negotiation, status, resize


def test_negotiation_takes_the_clients_first_supported_protocol() -> None:
    offered = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io"]
    assert _negotiate(offered, ("v2.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io"), "H") == \
        "v4.channel.k8s.io"


def test_negotiation_without_a_common_protocol_is_403_listing_ours() -> None:
    err = _negotiate(["v9"], ("v4.channel.k8s.io",), "X-Stream-Protocol-Version")
    assert isinstance(err, HttpError) and err.status == 403
    assert ("X-Accepted-Stream-Protocol-Versions", "v4.channel.k8s.io") in err.headers


def test_negotiation_without_the_header_is_400() -> None:
    err = _negotiate([], ("v4.channel.k8s.io",), "X-Stream-Protocol-Version")
    assert isinstance(err, HttpError) and err.status == 400


def test_expected_streams_follow_the_options_and_version() -> None:
    assert expected_spdy_streams("v4.channel.k8s.io", True, True, True, False) == \
        {"error", "stdin", "stdout", "resize"}
    assert expected_spdy_streams("v2.channel.k8s.io", True, True, True, False) == {"error", "stdin", "stdout"}
    assert expected_spdy_streams("v4.channel.k8s.io", False, False, True, True) == {"error", "stdout", "stderr"}


def test_nonzero_exit_status_json_carries_the_exit_code_cause() -> None:
    status = json.loads(status_message("v4.channel.k8s.io", Outcome(exit_code=3), ("sh",)))
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert json.loads(status_message("v5.channel.k8s.io", Outcome(exit_code=0), ())) == \
        {"metadata": {}, "status": "Success"}


def test_older_protocols_get_plain_text_and_nothing_on_success() -> None:
    assert status_message("v3.channel.k8s.io", Outcome(exit_code=0), ()) == b""
    assert b"exit code 2" in status_message("v2.channel.k8s.io", Outcome(exit_code=2), ("x",))


def test_internal_error_status_is_500_with_the_message() -> None:
    status = json.loads(status_message("v4.channel.k8s.io", Outcome(error="container gone"), ()))
    assert (status["reason"], status["code"]) == ("InternalError", 500)
    assert "container gone" in status["message"]


@pytest.mark.parametrize("code, shown", [(0, 0), (1, 1), (255, 255), (256, 0), (-9, 137), (-15, 143)])
def test_exit_codes_fit_the_uint8_the_client_parses(code: int, shown: int) -> None:
    assert exit_status(code) == shown


def test_resize_messages_back_to_back_and_split_across_frames() -> None:
    buf = bytearray(b'{"Width":80,"Height":24}\n{"Width":100,')
    assert parse_resizes(buf) == [(80, 24)]
    buf += b'"Height":30}\n'
    assert parse_resizes(buf) == [(100, 30)]
    assert buf == b""


@pytest.mark.parametrize("bad", [b'[1,2]\n', b'{"Width":-1,"Height":2}\n', b'{"Width":70000,"Height":2}\n',
                                 b'{"Width":"80","Height":2}\n', b'{nope}\n'])
def test_bad_resize_messages_are_rejected(bad: bytes) -> None:
    with pytest.raises(ValueError):
        parse_resizes(bytearray(bad))


# ---------------------------------------------------------------- request validation and config


def test_exec_tty_with_stderr_is_invalid_and_says_how_to_fix() -> None:
    with pytest.raises(InvalidArgument, match="tty and stderr.*set stderr=false"):
        validate_exec("c", ["sh"], True, True, True, True)


def test_exec_and_attach_need_at_least_one_stream() -> None:
    with pytest.raises(InvalidArgument, match="at least one of stdin, stdout or stderr"):
        validate_exec("c", ["sh"], False, False, False, False)
    with pytest.raises(InvalidArgument, match="Attach: at least one"):
        validate_attach("c", False, False, False, False)


def test_ids_and_cmd_are_required() -> None:
    with pytest.raises(InvalidArgument, match="container_id is required"):
        validate_exec("", ["sh"], False, False, True, False)
    with pytest.raises(InvalidArgument, match="cmd is required"):
        validate_exec("c", [], False, False, True, False)
    with pytest.raises(InvalidArgument, match="pod_sandbox_id is required"):
        validate_port_forward("")
    with pytest.raises(InvalidArgument, match="port 70000"):
        validate_port_forward("s", [70000])


def test_streaming_config_defaults_and_validation(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[streaming]\naddress = "localhost"\n')
    with pytest.raises(ConfigError, match="streaming.address: must be an IP address"):
        load(f)
    f.write_text("[streaming]\nidle_timeout = 0\n")
    with pytest.raises(ConfigError, match="streaming.idle_timeout: must be > 0"):
        load(f)
    f.write_text("[streaming]\nport = 12345\n")
    s = load(f).streaming
    assert (s.address, s.port, s.idle_timeout, s.stream_creation_timeout, s.max_tokens) == \
        ("127.0.0.1", 12345, 14400.0, 30.0, 1000)
