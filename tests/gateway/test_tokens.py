"""Offline token counting (o200k_base) and the prompt bound the hold is sized from."""

from __future__ import annotations

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
    text = "lorem ipsum dolor " * 70_000  # 1.26 M characters: bpe-openai alone refuses >= 1 M
    body = {"messages": [{"role": "user", "content": text}]}
    sync = counter.prompt_tokens("chat/completions", body)
    assert sync == await counter.prompt_tokens_async("chat/completions", body)  # counted in a thread
    # 3 tokens a repeat; each of the 32 pieces may split a word (one more token at most)
    assert 210_000 <= sync - REPLY_PRIMING - MESSAGE_OVERHEAD - 1 <= 210_000 + 32
