"""Mosquitto's password hashes (``$7$``: PBKDF2-SHA512, as ``mosquitto_passwd`` 2.0 writes).

``broker init`` writes the service accounts into the dynamic-security plugin's first file with
them; afterwards the plugin hashes every password it is given itself.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

MOSQUITTO_PBKDF2_ITERATIONS = 101  # mosquitto_passwd 2.0's default


def mosquitto_password_hash(
    password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_PBKDF2_ITERATIONS
) -> str:
    """``$7$<iterations>$<salt>$<hash>``: PBKDF2-SHA512 as ``mosquitto_passwd`` 2.0 writes it,
    the same hash the dynamic-security plugin keeps. The low iteration count is Mosquitto's own
    default and is safe because every password is 192 random bits (nothing to guess).
    """
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_mosquitto_password(password: str, stored: str) -> bool:
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt = base64.b64decode(parts[3])
    expected = mosquitto_password_hash(password, salt=salt, iterations=int(parts[2]))
    return secrets.compare_digest(expected, stored)
