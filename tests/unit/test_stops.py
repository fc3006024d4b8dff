"""StopStringMatcher and normalize_stop: trimming, hold-back, and flush (gateway/services/stops.py)."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequestError
from gateway.services.stops import StopStringMatcher, normalize_stop


def run(stops: list[str], pieces: list[str]) -> tuple[list[str], bool, str]:
    """Feed pieces until a hit; returns what each feed emitted, whether a stop hit, and the flush."""
    matcher = StopStringMatcher(stops)
    emitted = []
    for piece in pieces:
        out, hit = matcher.feed(piece)
        emitted.append(out)
        if hit:
            return emitted, True, matcher.flush()
    return emitted, False, matcher.flush()


def test_no_stops_passes_through():
    matcher = StopStringMatcher([])
    assert matcher.feed("anything <|im_end|>") == ("anything <|im_end|>", False)
    assert matcher.flush() == ""


def test_stop_at_the_very_start():
    emitted, hit, rest = run(["STOP"], ["STOP and more"])
    assert emitted == [""] and hit and rest == ""


def test_stop_at_start_across_feeds():
    emitted, hit, _ = run(["###"], ["#", "#", "#tail"])
    assert emitted == ["", "", ""] and hit


def test_multiple_stops_earliest_wins():
    emitted, hit, _ = run(["world", "lo"], ["hello world"])
    assert emitted == ["hel"] and hit
    emitted, hit, _ = run(["lo", "world"], ["hello world"])  # order in the list does not matter
    assert emitted == ["hel"] and hit


def test_earliest_wins_when_a_later_listed_stop_completes_first_in_buffer():
    # "abcd" is being held; "bc" completes inside it and starts earlier than anything else
    emitted, hit, _ = run(["abcdef", "bc"], ["xa", "bcd"])
    assert "".join(emitted) == "xa" and hit


def test_stop_split_across_three_feeds():
    emitted, hit, _ = run(["<|user|>"], ["Sure.<|", "us", "er|> next"])
    assert emitted == ["Sure.", "", ""] and hit
    assert "".join(emitted) == "Sure."


def test_overlapping_prefixes_emit_only_what_cannot_start_a_stop():
    matcher = StopStringMatcher(["aab"])
    assert matcher.feed("a") == ("", False)
    assert matcher.feed("a") == ("", False)
    assert matcher.feed("a") == ("a", False)  # "aaa": only the first "a" is safe
    assert matcher.feed("b") == ("", True)  # "aab" completes


def test_self_overlapping_stop_abab():
    emitted, hit, _ = run(["abab"], ["ab", "aab", "ab"])
    # "ab" held; "abaab" → no stop, keep "ab" (a prefix); then "abab" hits
    assert "".join(emitted) == "aba" and hit


def test_partial_match_that_fails_is_released():
    emitted, hit, rest = run(["END"], ["the EN", "ding"])
    assert not hit
    assert emitted == ["the ", "ENding"]
    assert rest == ""


def test_flush_returns_held_text():
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("foo EN") == ("foo ", False)
    assert matcher.flush() == "EN"
    assert matcher.flush() == ""
    assert matcher.feed("x") == ("x", False)


def test_text_after_stop_is_dropped():
    emitted, hit, rest = run(["\n\n"], ["line one\n", "\nline two"])
    assert "".join(emitted) == "line one" and hit and rest == ""


def test_multichar_unicode_stop():
    emitted, hit, _ = run(["终止"], ["你好终", "止了"])
    assert "".join(emitted) == "你好" and hit


def test_normalize_stop():
    assert normalize_stop(None, 4) == []
    assert normalize_stop("x", 4) == ["x"]
    assert normalize_stop(["a", "b"], 2) == ["a", "b"]
    with pytest.raises(InvalidRequestError) as excinfo:
        normalize_stop(["a", "b", "c"], 2)
    assert excinfo.value.param == "stop"
    with pytest.raises(InvalidRequestError):
        normalize_stop([""], 4)
    with pytest.raises(InvalidRequestError):
        normalize_stop("", 4)
