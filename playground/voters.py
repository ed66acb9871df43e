"""Who cast a vote, as the store records it (`votes.voter`): a signed-in Hugging Face user, or a keyed hash of the
client's network address. The cap on the pairs one voter puts into a round (`RoundSettings.pairs_per_voter`) counts
per voter; raw addresses are never stored.
"""

from __future__ import annotations

import hashlib
import hmac

HASH_HEX_DIGITS = 16  # 64 bits: no two addresses of one Space collide in practice, and it stays short


def user_voter(username: str) -> str:
    return f"hf:{username}"


def address_voter(salt: bytes, address: str) -> str:
    """'ip:' and an HMAC of the address under the store's secret salt: the same address gives the same voter (so the
    cap can count it), but without the salt nobody can test which address made a vote (IPv4 has only 2^32)."""
    digest = hmac.new(salt, address.encode(), hashlib.sha256).hexdigest()
    return f"ip:{digest[:HASH_HEX_DIGITS]}"
