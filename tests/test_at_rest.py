import pytest

from app.crypto.at_rest import SecretBox, SecretBoxError, generate_key, parse_key


def test_seal_open_roundtrip_and_ciphertext_hides_the_secret() -> None:
    box = SecretBox(parse_key(generate_key()))
    sealed = box.seal("corp-secret-値", purpose="app.secret")
    assert "corp-secret" not in sealed
    assert sealed != box.seal("corp-secret-値", purpose="app.secret")  # fresh nonce each time
    assert box.open(sealed, purpose="app.secret") == "corp-secret-値"


def test_wrong_key_wrong_purpose_and_tampering_do_not_open() -> None:
    box = SecretBox(parse_key(generate_key()))
    sealed = box.seal("s3cret", purpose="app.secret")
    with pytest.raises(SecretBoxError):
        SecretBox(parse_key(generate_key())).open(sealed, purpose="app.secret")
    with pytest.raises(SecretBoxError):
        box.open(sealed, purpose="app.token")
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(SecretBoxError):
        box.open(tampered, purpose="app.secret")


@pytest.mark.parametrize("text", ["", "too-short", "!" * 44])
def test_bad_keys_are_refused_with_advice(text: str) -> None:
    with pytest.raises(SecretBoxError, match="secret-key"):
        parse_key(text)
