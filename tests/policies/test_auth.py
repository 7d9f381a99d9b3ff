"""Authenticate: the API key from the Authorization header, looked up by hash; 401 when missing, unknown or revoked."""

from __future__ import annotations

import pytest

from policies.auth import Authenticate
from proxy.config.settings import Secret
from proxy.directory.types import ApiKey
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext
from tests.fakes import DirectoryKeys
from tests.policies.policy_support import KEY, FakeDirectory, make_ctx, with_key


async def auth_error(directory: FakeDirectory, ctx: RequestContext) -> ProxyError:
    with pytest.raises(ProxyError) as info:
        await Authenticate(DirectoryKeys(directory))(ctx)
    return info.value


async def test_valid_key_sets_ctx_key(directory: FakeDirectory) -> None:
    with_key(directory)
    ctx = make_ctx(authorization=f"bearer {KEY}")  # the scheme is case-insensitive
    await Authenticate(DirectoryKeys(directory))(ctx)
    assert ctx.key == ApiKey("key_1", "usr_1", None, False)
    assert ctx.api_key == Secret(KEY)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", KEY])
async def test_missing_key_is_invalid_api_key(directory: FakeDirectory, header: str | None) -> None:
    ctx = make_ctx() if header is None else make_ctx(authorization=header)
    error = await auth_error(directory, ctx)
    assert error.body() == {
        "error": {
            "message": "Missing API key: send 'Authorization: Bearer <key>'.",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert error.status == 401


async def test_unknown_and_revoked_keys(directory: FakeDirectory) -> None:
    error = await auth_error(directory, make_ctx(authorization=f"Bearer {KEY}"))
    assert (error.status, error.code, error.message) == (401, "invalid_api_key", "Invalid API key.")
    with_key(directory, revoked=True)
    error = await auth_error(directory, make_ctx(authorization=f"Bearer {KEY}"))
    assert (error.status, error.code) == (401, "revoked_api_key")
