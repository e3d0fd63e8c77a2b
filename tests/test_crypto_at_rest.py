"""Key ids and rotation of the at-rest key: every stored value says which key sealed it, and
values sealed before key ids, or with a replaced key, keep opening."""

import pytest

from app.config import Settings
from app.crypto.at_rest import SecretBox, SecretBoxError, generate_key, key_id, parse_key
from app.runtime import ConfigurationError, secret_box

# Sealed by the code of before key ids (AES-GCM, nonce 100…111, the purpose alone as
# associated data), as such values sit in databases today.
LEGACY_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
LEGACY_SEALED = "v1:ZGVmZ2hpamtsbW5vK3SsFlSaM/1MByvFP+XORjBR1nuCu64Z65ouJLQlDQ=="
LEGACY_PLAINTEXT = "corp-secret-値"


def test_a_sealed_value_names_its_key_by_an_id_that_does_not_reveal_it() -> None:
    key = parse_key(generate_key())
    box = SecretBox(key)
    sealed = box.seal("s3cret", purpose="app.secret")
    assert box.key_id == key_id(key) != key_id(parse_key(generate_key()))
    assert sealed.startswith(f"v1:{box.key_id}:")
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
    assert rotated.seal("token", purpose="app.token").startswith(f"v1:{key_id(new)}:")

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
