"""Writes the jwt target's seeds: a JWKS with an RSA and an EC P-256 public key, tokens signed
by their private keys (thrown away afterwards), and `signed.txt`, the signing inputs of those
tokens: the only ones the verifier may ever accept, whatever the fuzzer does to the rest.

Run with the test venv: python fuzz/seeds/gen_jwt_seeds.py
"""
import json
import pathlib

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

HERE = pathlib.Path(__file__).parent / "jwt"
ISSUER = "https://idp.fuzz.test"
AUDIENCE = "streammask"

rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
jwks = {"keys": []}
for kid, key, alg in [("rsa1", rsa_key, "RS256"), ("ec1", ec_key, "ES256")]:
    jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    jwks["keys"].append(jwk)
claims = {
    "iss": ISSUER,
    "aud": AUDIENCE,
    "sub": "dev@fuzz.test",
    "groups": ["engineering"],
    "iat": 1_700_000_000,
    "exp": 4_100_000_000,
}
signed = []
jwks_text = json.dumps(jwks, separators=(",", ":"))
for kid, key, alg in [("rsa1", rsa_key, "RS256"), ("ec1", ec_key, "ES256")]:
    token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
    signed.append(token.rsplit(".", 1)[0])
    (HERE / f"seed-{kid}").write_bytes(jwks_text.encode() + b"\0" + token.encode())
(HERE / "signed.txt").write_text("\n".join(signed) + "\n")
