"""InjectProviderKey: whose key, which models, and the 403 for a required key that is missing."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from policies.byok import InjectProviderKey
from proxy.config.catalogue import Catalogue
from proxy.config.settings import Secret
from proxy.directory.crypto import KeyBox
from proxy.directory.types import StoredProviderKey
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext
from tests.policies.policy_support import FakeDirectory, make_ctx, member


def ctx_for(model: str) -> RequestContext:
    ctx = make_ctx({"model": model})
    ctx.membership = member("org_a", user_id="usr_1")
    ctx.model = model
    return ctx


def store(
    directory: FakeDirectory,
    box: KeyBox,
    scope: str,
    key: str,
    *,
    enabled: bool = True,
    user: str = "usr_1",
    org: str = "org_a",
) -> None:
    ciphertext = box.encrypt(Secret(key))
    directory.provider.append(
        (org, user if scope == "user" else "", StoredProviderKey("openai", scope, ciphertext, enabled))
    )


async def inject(directory: FakeDirectory, catalogue: Catalogue, box: KeyBox, model: str) -> RequestContext:
    ctx = ctx_for(model)
    await InjectProviderKey(directory, catalogue, box)(ctx)
    return ctx


async def test_member_key_beats_org_key(
    directory: FakeDirectory, catalogue: Catalogue, keybox: KeyBox
) -> None:
    store(directory, keybox, "org", "sk-org-key-0000000000")
    store(directory, keybox, "user", "sk-member-key-1111111")
    store(directory, keybox, "user", "sk-other-member-22222", user="usr_2")
    ctx = await inject(directory, catalogue, keybox, "byok-gpt")
    assert ctx.byok and ctx.byok_key == Secret("sk-member-key-1111111")


async def test_org_key_when_member_has_none_or_disabled(
    directory: FakeDirectory, catalogue: Catalogue, keybox: KeyBox
) -> None:
    store(directory, keybox, "user", "sk-member-key-1111111", enabled=False)
    store(directory, keybox, "org", "sk-org-key-0000000000")
    ctx = await inject(directory, catalogue, keybox, "byok-gpt")
    assert ctx.byok and ctx.byok_key == Secret("sk-org-key-0000000000")


async def test_disabled_keys_are_ignored(
    directory: FakeDirectory, catalogue: Catalogue, keybox: KeyBox
) -> None:
    store(directory, keybox, "user", "sk-member-key-1111111", enabled=False)
    store(directory, keybox, "org", "sk-org-key-0000000000", enabled=False)
    ctx = await inject(directory, catalogue, keybox, "byok-gpt")  # optional: the platform key, billed
    assert (ctx.byok, ctx.byok_key) == (False, None)


async def test_no_key_for_a_model_whose_deployments_do_not_all_take_one(
    directory: FakeDirectory, catalogue: Catalogue, keybox: KeyBox
) -> None:
    store(directory, keybox, "user", "sk-member-key-1111111")
    ctx = await inject(directory, catalogue, keybox, "fake-large")
    assert (ctx.byok, ctx.byok_key) == (False, None)


async def test_required_without_a_usable_key_is_403(
    directory: FakeDirectory, catalogue: Catalogue, keybox: KeyBox
) -> None:
    store(directory, keybox, "user", "sk-member-key-1111111", enabled=False)
    store(directory, keybox, "org", "sk-org-key-0000000000", org="org_other")
    with pytest.raises(ProxyError) as info:
        await inject(directory, catalogue, keybox, "byok-only")
    assert info.value.body() == {
        "error": {
            "message": "The model 'byok-only' runs only with your own openai key: add one at /v1/byok/keys.",
            "type": "permission_error",
            "param": None,
            "code": "byok_key_required",
        }
    }
    store(directory, keybox, "org", "sk-org-key-0000000000")
    ctx = await inject(directory, catalogue, keybox, "byok-only")
    assert ctx.byok and ctx.byok_key == Secret("sk-org-key-0000000000")


async def test_keys_stored_before_a_rotation_still_decrypt(
    directory: FakeDirectory, catalogue: Catalogue
) -> None:
    old, new = Secret(Fernet.generate_key().decode()), Secret(Fernet.generate_key().decode())
    store(directory, KeyBox([old]), "user", "sk-member-key-1111111")
    ctx = await inject(directory, catalogue, KeyBox([new, old]), "byok-only")
    assert ctx.byok_key == Secret("sk-member-key-1111111")


async def test_an_undecryptable_key_is_skipped(
    directory: FakeDirectory, catalogue: Catalogue, keybox: KeyBox
) -> None:
    lost = KeyBox([Secret(Fernet.generate_key().decode())])  # a Fernet key removed from the list
    store(directory, lost, "user", "sk-member-key-1111111")
    store(directory, keybox, "org", "sk-org-key-0000000000")
    ctx = await inject(directory, catalogue, keybox, "byok-gpt")
    assert ctx.byok_key == Secret("sk-org-key-0000000000")


async def test_directory_failure_is_503(
    directory: FakeDirectory, catalogue: Catalogue, keybox: KeyBox
) -> None:
    directory.fail = OSError("down")
    with pytest.raises(ProxyError) as info:
        await inject(directory, catalogue, keybox, "byok-gpt")
    assert (info.value.status, info.value.code) == (503, "ledger_unavailable")
