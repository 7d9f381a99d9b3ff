"""Offline token counting: o200k_base, counted by tiktoken's Rust core from the ranks file the bpe-openai
wheel bundles (tiktoken alone would download that file; bpe-openai's own encoder holds 133 MiB per worker,
tiktoken's core about 45 MiB for the same counts).

`TokenCounter.prompt_tokens(route, body)` counts what a request sends as prompt: chat messages
(text and content parts), tool and function definitions, response formats, `prompt` and `input`
(strings or token arrays). `prompt_bound()` turns that count into an upper bound for the hold.

The safety margin: the models behind LiteLLM use other tokenizers (Claude, Llama, Qwen) that count
the same text differently, so an o200k_base count is an estimate (research/tokenizers.md). The hold
is for 1.5x that count plus 64 tokens, and every image part counts as `IMAGE_PART_TOKENS`, more than
one image costs under the OpenAI and Anthropic vision pricing rules as we understand them. The bound
only sizes the hold: a provider that reports more is still charged its real usage at settlement (the
ledger records any excess over the hold as overage).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import importlib.util
import math
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson

MESSAGE_OVERHEAD = 4  # role and separators per chat message (OpenAI's own accounting uses 3-4)
REPLY_PRIMING = 3  # tokens that start the assistant's reply
IMAGE_PART_TOKENS = 3000  # per image part, whatever its size or detail setting
THREAD_ABOVE_CHARS = 32_768  # a few ms of tokenizing (13 M characters took 2.8 s)
PIECE_CHARS = 40_000  # at most 4 tokens per character: under the encoder's 200,000-token limit
BOUND_FACTOR = Fraction(3, 2)
BOUND_SLACK = 64
_PROMPT_EXTRAS = ("tools", "functions", "tool_choice", "response_format", "prediction", "text")
O200K_RANKS = 199_998
# o200k_base's pre-tokenizer, as OpenAI publishes it (and bpe-openai 0.1.4 and tiktoken use it)
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])


class TokenCounter:
    """Counts tokens with o200k_base; the encoding loads on first use, not at import."""

    __slots__ = ("_encode",)

    def __init__(self, encode: Callable[[str], list[int]] | None = None) -> None:
        self._encode = encode

    def count(self, text: str) -> int:
        """Tokens in `text` (special-token text such as `<|endoftext|>` is counted as ordinary text)."""
        if not text:
            return 0
        if self._encode is None:
            self._encode = _load_o200k()
        encode = self._encode
        # counted in pieces: a bounded cost per call, and a piece never splits a pre-tokenizer word
        return sum(len(encode(piece)) for piece in _pieces(text))

    def warm(self) -> None:
        """Load the encoding now (about 0.7 s) rather than on the first request: call at start-up."""
        self.count("warm")

    def prompt_tokens(self, route: str, body: dict[str, Any]) -> int:
        """The prompt of a request as o200k_base counts it (the estimate recorded when no usage arrives)."""
        if route == "chat/completions":
            total = self._messages(body.get("messages"))
        elif route == "completions":
            total = sum(self._prompt_item(p) for p in _as_list(body.get("prompt")))
        elif route == "embeddings":
            total = sum(self._prompt_item(p) for p in _as_list(body.get("input")))
        elif route == "images/generations":
            total = self._text(body.get("prompt"))
        elif route == "responses":  # input items are messages (content parts) or items counted field by field
            items = body.get("input")
            total = self._messages(items if isinstance(items, list) else [{"content": items}])
            total += self._text(body.get("instructions"))
        else:
            total = self.count(_json(body))
        extras = [body[k] for k in _PROMPT_EXTRAS if k in body]
        return total + (self.count(_json(extras)) if extras else 0)

    async def prompt_tokens_async(self, route: str, body: dict[str, Any], *, large: bool | None = None) -> int:
        """`prompt_tokens`, in a worker thread when the prompt is large (`large`: `large_prompt(body)`, when
        the caller knows it): a 16 MiB body takes seconds to tokenize, which must not stall every other
        request on the event loop."""
        if not (large_prompt(body) if large is None else large):
            return self.prompt_tokens(route, body)
        return await asyncio.to_thread(self.prompt_tokens, route, body)

    def prompt_bound(self, route: str, body: dict[str, Any]) -> int:
        """An upper bound of the prompt tokens any supported model is billed for (see module doc)."""
        return bound(self.prompt_tokens(route, body))

    def _messages(self, messages: Any) -> int:
        if not isinstance(messages, list):
            return self.count(_json(messages)) if messages is not None else 0
        total = REPLY_PRIMING
        for message in messages:
            total += MESSAGE_OVERHEAD
            if not isinstance(message, dict):
                total += self.count(_json(message))
                continue
            for key, value in message.items():
                total += self._content(value) if key == "content" else self._text(value)
        return total

    def _content(self, content: Any) -> int:
        if not isinstance(content, list):
            return self._text(content)
        total = 0
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("text", "input_text", "output_text"):
                total += self._text(part.get("text"))
            elif kind in ("image_url", "image", "input_image"):
                total += IMAGE_PART_TOKENS
            else:  # audio, files, unknown parts: the serialized part bounds what it can cost
                total += self.count(_json(part))
        return total

    def _prompt_item(self, item: Any) -> int:
        if isinstance(item, int) and not isinstance(item, bool):
            return 1  # a token id
        if isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            return len(item)  # a token array
        return self._text(item)

    def _text(self, value: Any) -> int:
        if value is None:
            return 0
        return self.count(value if isinstance(value, str) else _json(value))


def _load_o200k() -> Callable[[str], list[int]]:
    """tiktoken's CoreBPE over bpe-openai's bundled o200k_base ranks and the o200k pattern. The ranks dict
    is dropped once the core is built (it keeps its own copy), and bpe-openai itself is never imported:
    only its data file is read, so its encoder is never loaded."""
    from tiktoken._tiktoken import CoreBPE  # the public Encoding would keep the 200,000-entry dict too

    ranks: dict[bytes, int] = {}
    with gzip.open(_o200k_file(), "rt", encoding="ascii") as lines:
        for line in lines:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != O200K_RANKS:
        raise RuntimeError(f"o200k_base ranks file has {len(ranks)} entries, expected {O200K_RANKS}")
    core = CoreBPE(ranks, {}, O200K_PATTERN)
    del ranks

    def encode(text: str) -> list[int]:
        try:
            tokens: list[int] = core.encode_ordinary(text)
        except UnicodeEncodeError:  # lone surrogates: counted as U+FFFD, as tiktoken's Encoding does
            tokens = core.encode_ordinary(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
        return tokens

    return encode


def _o200k_file() -> Path:
    """bpe-openai's bundled o200k_base.tiktoken.gz, found without importing the package (its import loads
    its own 74 MB extension)."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("bpe-openai (the o200k_base ranks file) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "o200k_base.tiktoken.gz"


def large_prompt(body: dict[str, Any]) -> bool:
    """True when counting the body's prompt costs more than a few milliseconds of CPU."""
    return _text_size(body) >= THREAD_ABOVE_CHARS


def bound(counted: int) -> int:
    """`ceil(counted * 1.5) + 64`: the hold's prompt bound for a counted prompt."""
    return math.ceil(counted * BOUND_FACTOR) + BOUND_SLACK


def prompt_count(route: str, body: dict[str, Any]) -> int:
    """How many prompts a request carries (a list `prompt` on /completions runs each one)."""
    if route == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
            return len(prompt)
    return 1


def _pieces(text: str) -> Iterator[str]:
    """`text` in pieces of at most PIECE_CHARS, cut before a space where one is near (the pre-tokenizer
    starts a word there too, so the sum of the counts stays the count of the whole)."""
    start = 0
    while start < len(text):
        end = min(start + PIECE_CHARS, len(text))
        if end < len(text):
            cut = text.rfind(" ", start + PIECE_CHARS // 2, end)
            end = cut if cut > start else end
        yield text[start:end]
        start = end


def _text_size(value: Any) -> int:
    """Characters in every string inside `value` (cheap next to tokenizing them)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_size(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_size(v) for v in value)
    return 8


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return [value]  # one token array
    return value if isinstance(value, list) else [value]


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
