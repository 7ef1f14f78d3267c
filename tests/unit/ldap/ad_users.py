"""Accounts that tests/unit/ldap/test_ad_dir.c searches for, written into the
Samba AD of the fixture (CERTMAPD_SAMBA_DIR) with tests/e2e/samba.py.

Prints one "name SID" line per account, for the C test to compare with.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "e2e"))
from samba import Samba  # noqa: E402

ISSUER = "DC=test,DC=example,DC=corp,CN=Corp Issuing CA"

ad = Samba()
ad.user_create("dirt-alice", upn="dirt-alice@corp.example.test", password="Passw0rd!Alice")
ad.set_altsecids("dirt-alice", [f"X509:<I>{ISSUER}<SR>0A1B2C3D", "X509:<SKI>DIRTA11CE"])
for twin in ("dirt-twin1", "dirt-twin2"):
    ad.user_create(twin, upn=f"{twin}@corp.example.test", password="Passw0rd!Twin1")
    ad.set_altsecids(twin, [f"X509:<I>{ISSUER}<SR>77777777"])
ad.user_create("dirt-bob", upn="dirt-bob@corp.example.test", password="Passw0rd!Bob12")
ad.user_disable("dirt-bob")
ad.computer_create("dirt-ws1", "dirt-ws1.corp.example.test")
for name in ("dirt-alice", "dirt-twin1", "dirt-twin2", "dirt-bob", "DIRT-WS1$"):
    print(name, ad.user_sid(name))
