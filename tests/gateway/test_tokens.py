"""Offline token counting (o200k_base) and the prompt bound the hold is sized from."""

from __future__ import annotations

import random
import subprocess
import sys
import warnings
from pathlib import Path

from proxy.gateway.tokens import IMAGE_PART_TOKENS, MESSAGE_OVERHEAD, REPLY_PRIMING, TokenCounter, bound, prompt_count


def test_token_counts_offline(counter: TokenCounter) -> None:
    assert counter.count("hello world") == 2
    assert counter.count("") == 0
    assert counter.count("<|endoftext|>") > 1  # ordinary text, never a special token or an error


def test_chat_prompt_count_and_bound(counter: TokenCounter) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hello world"}, {"type": "image_url"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    tools = counter.count('[[{"type":"function","function":{"name":"f"}}]]')
    expected = (
        REPLY_PRIMING
        + 2 * MESSAGE_OVERHEAD
        + counter.count("system")
        + counter.count("Be brief.")
        + counter.count("user")
        + counter.count("hello world")
        + IMAGE_PART_TOKENS
        + tools
    )
    assert counter.prompt_tokens("chat/completions", body) == expected
    assert counter.prompt_bound("chat/completions", body) == -(-expected * 3 // 2) + 64
    assert bound(0) == 64 and bound(3) == 69


def test_completion_and_embedding_prompts(counter: TokenCounter) -> None:
    assert counter.prompt_tokens("completions", {"prompt": [1, 2, 3]}) == 3  # one token array
    assert counter.prompt_tokens("completions", {"prompt": ["hello world", "hello"]}) == 3
    assert prompt_count("completions", {"prompt": ["a", "b"]}) == 2
    assert prompt_count("completions", {"prompt": [1, 2]}) == 1
    assert counter.prompt_tokens("embeddings", {"input": [[5, 6], [7]]}) == 3
    assert counter.prompt_tokens("embeddings", {"input": "hello world"}) == 2


async def test_prompts_over_the_encoders_limits_are_counted(counter: TokenCounter) -> None:
    text = "lorem ipsum dolor " * 70_000  # 1.26 M characters, counted in 40,000-character pieces
    body = {"messages": [{"role": "user", "content": text}]}
    sync = counter.prompt_tokens("chat/completions", body)
    assert sync == await counter.prompt_tokens_async("chat/completions", body)  # counted in a thread
    # 3 tokens a repeat; each of the 32 pieces may split a word (one more token at most)
    assert 210_000 <= sync - REPLY_PRIMING - MESSAGE_OVERHEAD - 1 <= 210_000 + 32


def test_counts_equal_bpe_openais_own_o200k_encoder(counter: TokenCounter) -> None:
    """The counter reads bpe-openai's ranks file into tiktoken's core: on text of every kind (prose, code,
    digits, whitespace runs, contractions, scripts, emoji, special-token text) it must count exactly what
    bpe-openai's own encoder counts, the one the holds were sized with before."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai

        reference = bpe_openai.get_encoding("o200k_base")
    rng = random.Random(13)
    alphabet = "aZ09 \t\n\r'sTLL’é漢字😀🙂\u200d\u0301-_/.,!?\\\"<|endoftext|>ﬁ𝔘ǅ"
    texts = [Path(__file__).read_text(encoding="utf-8"), "I'm 12345678 DON'T you'll\n\n\n  x  ", " " * 40]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 120))) for _ in range(400)]
    texts += ["".join(chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(60)) for _ in range(100)]
    texts = [t.encode("utf-8", "ignore").decode("utf-8") for t in texts]  # bpe-openai refuses lone surrogates
    assert [counter.count(t) for t in texts] == [len(reference.encode_ordinary(t)) for t in texts]


def test_lone_surrogates_are_counted_not_raised(counter: TokenCounter) -> None:
    assert counter.count("a\ud800b") == counter.count("a\ufffdb")


def test_the_counter_never_loads_bpe_openais_encoder() -> None:
    """Only bpe-openai's data file is read: importing the package would map its 74 MB extension and its
    encoder would hold 133 MiB per worker (why tiktoken's core counts)."""
    code = ("import sys; from proxy.gateway.tokens import TokenCounter; c = TokenCounter(); c.warm(); "
            "print(c.count('hello world'), 'bpe_openai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False"]
