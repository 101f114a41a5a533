import re

import pytest

from clinik.keys import tokens


def test_a_live_key_has_the_prefix_randomness_and_checksum() -> None:
    key = tokens.generate()
    assert re.fullmatch(r"ck_live_[0-9A-Za-z]{38}", key)
    assert tokens.is_well_formed(key)
    assert key[-6:] == tokens.checksum(key[:-6])


def test_the_random_part_carries_at_least_160_bits() -> None:
    import math

    assert tokens.RANDOM_LENGTH * math.log2(len(tokens.ALPHABET)) >= 160
    assert len({tokens.random_part(tokens.generate()) for _ in range(200)}) == 200


def test_test_keys_are_reserved_and_well_formed() -> None:
    key = tokens.generate(tokens.TEST)
    assert key.startswith("ck_test_") and tokens.is_well_formed(key)
    with pytest.raises(ValueError):
        tokens.generate("ck_prod_")


def test_any_single_character_change_breaks_the_checksum() -> None:
    key = tokens.generate()
    for position in range(len("ck_live_"), len(key)):
        for replacement in "0aZ":
            if key[position] == replacement:
                continue
            typo = key[:position] + replacement + key[position + 1 :]
            assert not tokens.is_well_formed(typo), (position, replacement)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "ck_live_",
        "ck_live_short",
        "ck_prod_" + "a" * 38,
        "CK_LIVE_" + "a" * 38,
        "ck_live_" + "a" * 37 + "-",
        "ck_live_" + "a" * 39,
        "ck_live_" + "é" * 38,
        " ck_live_" + "a" * 37,
    ],
)
def test_malformed_keys_are_refused(value: str) -> None:
    assert not tokens.is_well_formed(value)


def test_the_hint_is_short_and_not_the_secret() -> None:
    key = tokens.generate()
    hint = tokens.hint(key)
    assert hint.prefix == key[:12] and hint.last4 == key[-4:]
    assert tokens.random_part(key) not in hint.prefix + hint.last4


def test_the_digest_is_sha256_of_the_whole_key() -> None:
    import hashlib

    key = tokens.generate()
    assert tokens.digest(key) == hashlib.sha256(key.encode()).hexdigest()
