#!/usr/bin/env python3
"""Sign a bench JWT with the test fixtures' keys, through the openssl CLI
(no Python crypto package needed).

    mintjwt.py ALG KEY.pem KID ISSUER AUDIENCE LIFETIME_SECONDS

ALG is ES256 (ECDSA P-256, signature as r||s per RFC 7518 §3.4) or EdDSA.
"""

import base64
import json
import subprocess
import sys
import tempfile
import time


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_to_raw(der, size=32):
    """ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } -> r||s."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        value = der[i + 2:i + 2 + n].lstrip(b"\x00")
        out += value.rjust(size, b"\x00")
        i += 2 + n
    return out


def main():
    alg, key, kid, issuer, audience, lifetime = sys.argv[1:7]
    now = int(time.time())
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    claims = {"sub": "bench", "iss": issuer, "aud": audience, "iat": now, "exp": now + int(lifetime), "scope": "bench"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}".encode()
    with tempfile.NamedTemporaryFile() as f:
        f.write(signing_input)
        f.flush()
        if alg == "ES256":
            der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key, f.name],
                                 check=True, capture_output=True).stdout
            signature = der_to_raw(der)
        elif alg == "EdDSA":
            signature = subprocess.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", f.name],
                                       check=True, capture_output=True).stdout
        else:
            raise SystemExit(f"unsupported algorithm {alg}")
    print(f"{signing_input.decode()}.{b64(signature)}")


if __name__ == "__main__":
    main()
