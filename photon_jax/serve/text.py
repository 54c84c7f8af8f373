"""One sample's text as its tokens arrive: incremental detokenization and stop strings.

Text is released only when it can no longer change: a trailing replacement character (an
incomplete multi-byte sequence) and any tail that could still grow into a stop string are held
back until the next token or the end. As vLLM: with include_stop_str_in_output the stop string stays in
the text (nothing need be held back for it), and a stop string must end after the first min_tokens tokens.
"""

from __future__ import annotations


class SampleText:
    def __init__(self, tokenizer, stops: list[str], include_stop: bool = False, min_tokens: int = 0):
        self.tok = tokenizer
        self.stops = stops
        self.include_stop = include_stop
        self.min_tokens = min_tokens
        self.floor = 0  # characters of the first min_tokens tokens: no stop string may end within them
        self.hold = 0 if include_stop else max((len(s) for s in stops), default=1) - 1
        self.tokens: list[int] = []
        self.logprobs: list[dict] = []
        self.counted = 0  # generated tokens, the stop / EOS token included (usage)
        self.text = ""
        self.sent = 0  # characters of self.text already released
        self.finish: str | None = None

    def add(self, ids: list[int], logprobs, count: int) -> bool:
        """Append tokens; True when a stop string has ended the sample (the text is cut before it)."""
        self.tokens += ids
        self.counted += count
        if logprobs:
            self.logprobs += logprobs
        self.text = self.tok.decode(self.tokens) if self.tokens else ""
        if self.counted <= self.min_tokens:
            self.floor = len(self.text)
            return False
        for stop in self.stops:
            at = self.text.find(stop, max(0, self.floor - len(stop) + 1))
            if at >= 0:
                self.text = self.text[: at + len(stop) if self.include_stop else at]
                self.finish = "stop"
                return True
        return False

    def release(self, final: bool = False) -> str:
        """The text that became certain since the last call."""
        end = len(self.text)
        if not final:
            while end > self.sent and self.text[end - 1] == "\ufffd":
                end -= 1
            end = max(self.sent, end - self.hold)
        out = self.text[self.sent: end]
        self.sent = end
        return out


class TokenIdText:
    """The "tokenizer" of a server without one (a preset's random weights, for benchmarks): prompts must be
    token ids, a completion's text is its ids (" 17 4 99"), and there is no EOS."""

    eos_id = None

    def decode(self, ids) -> str:
        return "".join(f" {int(i)}" for i in ids)
