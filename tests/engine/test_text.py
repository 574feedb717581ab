"""The frontend's text: incremental detokenization, stop strings, chat templates."""

from __future__ import annotations

import pytest

from lorafleet.dataplane.engine.outputs import RequestOutput, TokenLogprob, Usage
from lorafleet.dataplane.engine.request import FinishReason, RequestTimings
from lorafleet.dataplane.server.detokenize import Detokenizer
from lorafleet.dataplane.server.text import OutputText
from lorafleet.dataplane.server.tokenizer import ChatTemplateError, Tokenizer


class CharDecoder:
    """One token per character: token id = code point."""

    def decode(self, token_ids):
        return "".join(chr(t) for t in token_ids)


def _stream(text: str, stop: tuple[str, ...]):
    out = OutputText(CharDecoder(), [], stop)
    deltas = []
    for ch in text:
        delta, matched = out.push([ord(ch)])
        deltas.append(delta)
        if matched:
            return deltas, matched
    deltas.append(out.flush())
    return deltas, None


def test_stop_string_is_cut_exactly_and_never_leaks():
    deltas, matched = _stream("Hello wonderful world", stop=("world", "wonder!"))
    assert matched == "world"
    emitted = "".join(deltas)
    assert emitted == "Hello wonderful "
    # While "wo…" could still become a stop string, none of it was emitted.
    for i in range(len(deltas)):
        assert "Hello wonderful ".startswith("".join(deltas[: i + 1]))
    assert deltas[6] == ""  # "w" of "wonderful" held back


def test_held_back_prefix_is_released_when_it_stops_matching_or_at_the_end():
    deltas, matched = _stream("a wo", stop=("world",))
    assert matched is None
    assert deltas[:-1] == ["a", " ", "", ""] and deltas[-1] == "wo"


def _engine_output(token_ids, num_output_tokens, reason=None):
    return RequestOutput(
        request_id="r", new_token_ids=tuple(token_ids), finish_reason=reason,
        logprobs=tuple(TokenLogprob(t, -1.0) for t in token_ids),
        usage=Usage(3, num_output_tokens), timings=RequestTimings(arrival=0.0))


def test_detokenizer_ends_the_request_at_the_token_that_completed_the_stop_string():
    detokenizer = Detokenizer(CharDecoder(), (1, 2, 3), ("cd",))
    first = detokenizer.process(_engine_output([ord("a")], 1))
    assert (first.text, first.finish_reason, detokenizer.is_stopped) == ("a", None, False)
    # The engine reports more tokens than the stop string needed (and would go on).
    last = detokenizer.process(_engine_output([ord(c) for c in "bcde"], 5))
    assert last.text == "b" and last.stop_string == "cd"
    assert last.finish_reason is FinishReason.STOP and detokenizer.is_stopped
    assert last.new_token_ids == (ord("b"), ord("c"), ord("d"))
    assert len(last.logprobs) == 3 and last.usage.num_output_tokens == 4


def test_detokenizer_releases_held_back_text_when_the_engine_finishes():
    detokenizer = Detokenizer(CharDecoder(), (), ("xyz",))
    assert detokenizer.process(_engine_output([ord("x")], 1)).text == ""
    last = detokenizer.process(_engine_output([ord("y")], 2, FinishReason.LENGTH))
    assert last.text == "xy" and last.finish_reason is FinishReason.LENGTH
    assert last.stop_string is None and last.usage.num_output_tokens == 2


@pytest.fixture(scope="module")
def tokenizer(checkpoints):
    directory = checkpoints("llama-gqa")
    return Tokenizer.from_dir(directory, eos_token_ids=(2,))


def test_emoji_split_across_tokens_never_yields_broken_utf8(tokenizer):
    text = "emoji 🙂 café 東京"
    ids = tokenizer.encode(text)
    emoji_pieces = [t for t in ids if "\ufffd" in tokenizer.decode([t])]
    assert emoji_pieces, "the test needs a character split over several tokens"
    out = OutputText(tokenizer, [1], ())
    deltas = [out.push([t])[0] for t in ids] + [out.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_chat_template_renders_messages(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tokenizer.render_chat(messages) == "<|system|>Be brief.</s><|user|>Hi</s><|assistant|>"
    ids = tokenizer.encode_chat(messages)
    assert ids[0] == tokenizer._tokenizer.token_to_id("<|system|>")


def test_checkpoint_without_chat_template_says_so(tokenizer):
    bare = Tokenizer(tokenizer._tokenizer, chat_template=None)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        bare.render_chat([{"role": "user", "content": "Hi"}])
