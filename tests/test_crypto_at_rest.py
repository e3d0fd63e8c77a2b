"""Key ids, rotation and owners of the at-rest key: every stored value says which key sealed
it and is bound to its owner, and values sealed before key ids or owners, or with a replaced
key, keep opening."""

from pathlib import Path

import pytest

from app.config import Settings
from app.crypto.at_rest import SecretBox, SecretBoxError, generate_key, key_id, parse_key
from app.runtime import ConfigurationError, secret_box

# Sealed by the code of before key ids (AES-GCM, nonce 100…111, the purpose alone as
# associated data), as such values sit in databases today.
LEGACY_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
LEGACY_SEALED = "v1:ZGVmZ2hpamtsbW5vK3SsFlSaM/1MByvFP+XORjBR1nuCu64Z65ouJLQlDQ=="
LEGACY_PLAINTEXT = "corp-secret-値"
# Sealed by the code of before owners (`v1:<key id>:`, associated data `<key id>:<purpose>`,
# nonce 120…131) with LEGACY_KEY.
KEYED_SEALED = "v1:698fb0a8:eHl6e3x9fn+AgYKDcjeDsv5HlvsEhCbb0H8ddAKknGUOFrc3cImjLsvc"
KEYED_PLAINTEXT = "callback-token"


def test_a_sealed_value_names_its_key_by_an_id_that_does_not_reveal_it() -> None:
    key = parse_key(generate_key())
    box = SecretBox(key)
    sealed = box.seal("s3cret", purpose="app.secret")
    assert box.key_id == key_id(key) != key_id(parse_key(generate_key()))
    assert sealed.startswith(f"v2:{box.key_id}:")
    assert len(box.key_id) == 8 and box.key_id not in key.hex()
    assert box.open(sealed, purpose="app.secret") == "s3cret"


def test_values_sealed_before_key_ids_still_open_with_their_purpose_only() -> None:
    box = SecretBox(parse_key(LEGACY_KEY))
    assert box.open(LEGACY_SEALED, purpose="app.secret") == LEGACY_PLAINTEXT
    with pytest.raises(SecretBoxError):
        box.open(LEGACY_SEALED, purpose="app.token")


def test_after_a_rotation_old_values_open_and_new_ones_use_the_new_key() -> None:
    old, new = parse_key(LEGACY_KEY), parse_key(generate_key())
    sealed_by_old = SecretBox(old).seal("token", purpose="app.token")
    rotated = SecretBox(new, previous=[old])
    assert rotated.open(LEGACY_SEALED, purpose="app.secret") == LEGACY_PLAINTEXT
    assert rotated.open(sealed_by_old, purpose="app.token") == "token"
    assert rotated.seal("token", purpose="app.token").startswith(f"v2:{key_id(new)}:")

    with pytest.raises(SecretBoxError, match=f"key {key_id(old)}, which is not configured"):
        SecretBox(new).open(sealed_by_old, purpose="app.token")
    with pytest.raises(SecretBoxError, match="wrong key"):
        SecretBox(new).open(LEGACY_SEALED, purpose="app.secret")


def test_the_key_id_is_authenticated_with_the_value() -> None:
    """A value relabelled with another configured key's id does not open under that key, nor
    does one stripped of its id pass for a value of before key ids."""
    old, new = parse_key(generate_key()), parse_key(generate_key())
    box = SecretBox(new, previous=[old])
    sealed = SecretBox(old).seal("s3cret", purpose="app.secret")
    relabelled = sealed.replace(key_id(old), key_id(new))
    stripped = sealed.replace(f"{key_id(old)}:", "")
    for forged in (relabelled, stripped):
        with pytest.raises(SecretBoxError):
            box.open(forged, purpose="app.secret")


def test_a_key_given_twice_is_refused() -> None:
    key = parse_key(generate_key())
    with pytest.raises(SecretBoxError, match="given twice"):
        SecretBox(key, previous=[key])


def test_previous_keys_are_read_from_the_settings() -> None:
    old, new = generate_key(), generate_key()
    settings = Settings(_env_file=None, secret_key=new, previous_secret_keys=f"{LEGACY_KEY}, {old}")
    box = secret_box(settings)
    assert box.key_id == key_id(parse_key(new))
    sealed_by_old = SecretBox(parse_key(old)).seal("x", purpose="p")
    assert box.open(sealed_by_old, purpose="p") == "x"
    assert box.open(LEGACY_SEALED, purpose="app.secret") == LEGACY_PLAINTEXT

    bad = Settings(_env_file=None, secret_key=new, previous_secret_keys=f"{old},nonsense")
    with pytest.raises(ConfigurationError, match=r"WECOM_HUB_PREVIOUS_SECRET_KEYS: .*32"):
        secret_box(bad)


def test_values_sealed_before_owners_still_open_whatever_the_owner() -> None:
    box = SecretBox(parse_key(generate_key()), previous=[parse_key(LEGACY_KEY)])
    assert box.open(KEYED_SEALED, purpose="app.token", owner="apps/1/ww1") == KEYED_PLAINTEXT
    assert box.open(KEYED_SEALED, purpose="app.token") == KEYED_PLAINTEXT
    with pytest.raises(SecretBoxError):
        box.open(KEYED_SEALED, purpose="app.secret")
    assert box.needs_resealing(KEYED_SEALED) and box.needs_resealing(LEGACY_SEALED)


def test_a_value_opens_only_for_the_owner_it_was_sealed_for() -> None:
    """A secret copied from one app's row into another's does not open there."""
    box = SecretBox(parse_key(generate_key()))
    sealed = box.seal("corp secret", purpose="app.secret", owner="apps/1/wwA")
    assert box.open(sealed, purpose="app.secret", owner="apps/1/wwA") == "corp secret"
    for owner in ("apps/2/wwA", "apps/1/wwB", ""):
        with pytest.raises(SecretBoxError, match="not this row's value"):
            box.open(sealed, purpose="app.secret", owner=owner)
    # The separator cannot be forged by moving text between purpose and owner.
    with pytest.raises(SecretBoxError):
        box.open(sealed, purpose="app.secret\0apps/1", owner="wwA")


def test_only_values_of_the_current_key_and_format_need_no_resealing() -> None:
    old, new = parse_key(generate_key()), parse_key(generate_key())
    box = SecretBox(new, previous=[old])
    assert not box.needs_resealing(box.seal("x", purpose="p", owner="o"))
    assert box.needs_resealing(SecretBox(old).seal("x", purpose="p", owner="o"))
    assert box.previous_key_ids == [key_id(old)]


def test_previous_keys_may_come_from_a_file(tmp_path: Path) -> None:
    old, older, new = generate_key(), generate_key(), generate_key()
    path = tmp_path / "previous"
    path.write_text(f"{old}\n{older}\n")
    settings = Settings(_env_file=None, secret_key=new, previous_secret_keys_file=path)
    box = secret_box(settings)
    for key in (old, older):
        assert box.open(SecretBox(parse_key(key)).seal("x", purpose="p"), purpose="p") == "x"

    both = Settings(
        _env_file=None, secret_key=new, previous_secret_keys=old, previous_secret_keys_file=path
    )
    with pytest.raises(ConfigurationError, match="keep one"):
        secret_box(both)
    path.write_text("nonsense\n")
    with pytest.raises(ConfigurationError, match=f"PREVIOUS_SECRET_KEYS_FILE {path}: .*32"):
        secret_box(settings)
