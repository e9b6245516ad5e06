"""state.tls: PEM material checked from plain strings, each failure typed and named."""

from __future__ import annotations

import datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.servers.tls import (
    CertAuthority,
    cert_pem,
    intermediate,
    key_pem,
    make_ca,
    new_key,
    now,
)
from state.config import InvalidConfigError
from state.tls import (
    BackendTLS,
    CertificateExpiredError,
    CertificateNotYetValidError,
    ClientTLSMaterial,
    GarbagePEMError,
    KeyMismatchError,
    MissingCAError,
    TLSMaterialError,
    TLSRequiredError,
    UnsupportedKeyError,
    UntrustedCertificateError,
    client_sslmode,
    client_tls_mode,
    libpq_tls_params,
    parse_certificates,
)

CA = make_ca("unit CA")
OTHER_CA = make_ca("another CA")
LEAF = CA.leaf("pgbouncer-k8s-0", dns=("pgbouncer-k8s.dev.svc.cluster.local",), ips=("10.1.2.3",))


def test_good_material_is_kept_normalised_and_the_key_is_not_in_repr():
    mat = ClientTLSMaterial.from_pem(LEAF.cert_pem, LEAF.key_pem, CA.pem)
    assert mat.serial == LEAF.serial
    assert mat.cert_pem == LEAF.cert_pem
    assert mat.ca_pem == CA.pem
    assert mat.sans_dns == ("pgbouncer-k8s.dev.svc.cluster.local",)
    assert mat.sans_ip == ("10.1.2.3",)
    assert mat.key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE" not in repr(mat)
    assert mat.key_pem.splitlines()[1] not in repr(mat)


def test_text_around_the_pem_never_reaches_the_output():
    hostile = "[pgbouncer]\nauth_type = trust\n" + LEAF.cert_pem + "\nlisten_addr = *\n"
    mat = ClientTLSMaterial.from_pem(hostile, "junk\n" + LEAF.key_pem + "junk", CA.pem)
    for text in (mat.cert_pem, mat.key_pem, mat.ca_pem):
        assert "auth_type" not in text
        assert "listen_addr" not in text
        assert "junk" not in text


def test_a_certificate_for_another_key_is_refused():
    other = CA.leaf()
    with pytest.raises(KeyMismatchError) as err:
        ClientTLSMaterial.from_pem(LEAF.cert_pem, other.key_pem, CA.pem)
    assert "does not match its private key" in str(err.value)


def test_an_expired_certificate_is_refused():
    leaf = CA.leaf(
        not_before=now() - datetime.timedelta(days=10),
        not_after=now() - datetime.timedelta(days=1),
    )
    with pytest.raises(CertificateExpiredError) as err:
        ClientTLSMaterial.from_pem(leaf.cert_pem, leaf.key_pem, CA.pem)
    assert err.value.source == "certificate"
    assert "expired" in str(err.value)


def test_a_certificate_valid_only_later_is_refused():
    leaf = CA.leaf(not_before=now() + datetime.timedelta(days=1))
    with pytest.raises(CertificateNotYetValidError):
        ClientTLSMaterial.from_pem(leaf.cert_pem, leaf.key_pem, CA.pem)


def test_validity_is_checked_at_the_moment_given():
    later = now() + datetime.timedelta(days=31)
    with pytest.raises(CertificateExpiredError):
        ClientTLSMaterial.from_pem(LEAF.cert_pem, LEAF.key_pem, CA.pem, now=later)


def test_a_ca_that_did_not_sign_the_certificate_is_refused():
    with pytest.raises(UntrustedCertificateError) as err:
        ClientTLSMaterial.from_pem(LEAF.cert_pem, LEAF.key_pem, OTHER_CA.pem)
    assert "not signed by the CA" in str(err.value)


def test_a_leaf_posing_as_the_ca_is_refused():
    # A leaf's key signs a second certificate naming the leaf as its issuer: the signature
    # checks out, only BasicConstraints (ca=False) tells that the issuer may not sign.
    posing = CA.leaf("posing CA")
    victim = CertAuthority(name="posing CA", key=posing.key, cert=posing.cert).leaf()
    with pytest.raises(UntrustedCertificateError) as err:
        ClientTLSMaterial.from_pem(victim.cert_pem, victim.key_pem, posing.cert_pem)
    assert "not marked as a CA" in str(err.value)


def test_an_intermediate_in_the_chain_is_followed_and_served():
    inter = intermediate(CA)
    leaf = inter.leaf()
    # In the certificate field after the leaf:
    mat = ClientTLSMaterial.from_pem(leaf.cert_pem + inter.pem, leaf.key_pem, CA.pem)
    assert mat.cert_pem == leaf.cert_pem + inter.pem
    # As a provider's chain that repeats the leaf and the CA:
    mat2 = ClientTLSMaterial.from_pem(
        leaf.cert_pem, leaf.key_pem, CA.pem, chain=leaf.cert_pem + inter.pem + CA.pem
    )
    assert mat2.cert_pem == leaf.cert_pem + inter.pem
    assert mat2.ca_pem == CA.pem


def test_a_missing_intermediate_is_refused():
    leaf = intermediate(CA).leaf()
    with pytest.raises(UntrustedCertificateError):
        ClientTLSMaterial.from_pem(leaf.cert_pem, leaf.key_pem, CA.pem)


def test_an_expired_ca_is_refused():
    old = make_ca("old CA", not_after=now() + datetime.timedelta(seconds=1))
    leaf = old.leaf()
    with pytest.raises(CertificateExpiredError) as err:
        ClientTLSMaterial.from_pem(
            leaf.cert_pem, leaf.key_pem, old.pem, now=now() + datetime.timedelta(minutes=1)
        )
    assert err.value.source in {"certificate", "ca"}


def test_an_encrypted_key_is_refused_as_unsupported():
    encrypted = LEAF.key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    ).decode()
    with pytest.raises(UnsupportedKeyError):
        ClientTLSMaterial.from_pem(LEAF.cert_pem, encrypted, CA.pem)


def test_a_short_rsa_key_is_refused():
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the weak key under test)
    cert = CA.sign(key.public_key(), "weak")
    with pytest.raises(UnsupportedKeyError):
        ClientTLSMaterial.from_pem(cert_pem(cert), key_pem(key), CA.pem)


def test_an_rsa_key_works():
    leaf = CA.leaf(kind="rsa")
    assert ClientTLSMaterial.from_pem(leaf.cert_pem, leaf.key_pem, CA.pem).serial == leaf.serial


@pytest.mark.parametrize(
    ("cert", "key", "ca", "source"),
    [
        ("", LEAF.key_pem, CA.pem, "certificate"),
        ("not a pem", LEAF.key_pem, CA.pem, "certificate"),
        (LEAF.key_pem, LEAF.key_pem, CA.pem, "certificate"),  # a key where a cert goes
        (LEAF.cert_pem, LEAF.cert_pem, CA.pem, "private key"),  # a cert where the key goes
        (LEAF.cert_pem, LEAF.key_pem + LEAF.key_pem, CA.pem, "private key"),  # two keys
        (LEAF.cert_pem, LEAF.key_pem, "", "ca"),
        (LEAF.cert_pem.replace("M", "A", 5), LEAF.key_pem, CA.pem, "certificate"),  # corrupt
        (LEAF.cert_pem, LEAF.key_pem[:80] + LEAF.key_pem[-30:], CA.pem, "private key"),
        (LEAF.cert_pem + "é", LEAF.key_pem, CA.pem, "certificate"),
        (LEAF.cert_pem * 9, LEAF.key_pem, CA.pem, "certificate"),  # too many
        ("A" * 70000, LEAF.key_pem, CA.pem, "certificate"),  # too long
        (None, LEAF.key_pem, CA.pem, "certificate"),
    ],
)
def test_garbage_pem_is_refused_naming_the_input(cert, key, ca, source):
    with pytest.raises(GarbagePEMError) as err:
        ClientTLSMaterial.from_pem(cert, key, ca)
    assert err.value.source == source


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
        st.text(max_size=200).map(
            lambda body: f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
        ),
        st.binary(min_size=1, max_size=200).map(
            lambda b: (
                "-----BEGIN CERTIFICATE-----\n"
                + __import__("base64").b64encode(b).decode()
                + "\n-----END CERTIFICATE-----\n"
            )
        ),
    ),
    st.sampled_from(["certificate", "private_key", "ca"]),
)
def test_any_garbage_raises_only_a_typed_error(garbage, which):
    args = {"certificate": LEAF.cert_pem, "private_key": LEAF.key_pem, "ca": CA.pem}
    args[which] = garbage
    with pytest.raises(TLSMaterialError):
        ClientTLSMaterial.from_pem(
            certificate=args["certificate"], private_key=args["private_key"], ca=args["ca"]
        )


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=400))
def test_garbage_der_inside_a_key_block_is_a_typed_error(raw):
    import base64

    block = f"-----BEGIN PRIVATE KEY-----\n{base64.b64encode(raw).decode()}\n-----END PRIVATE KEY-----\n"
    with pytest.raises(TLSMaterialError):
        ClientTLSMaterial.from_pem(LEAF.cert_pem, block, CA.pem)


def test_parse_certificates_keeps_the_order():
    other = OTHER_CA.leaf()
    certs = parse_certificates(LEAF.cert_pem + other.cert_pem, "x")
    assert [c.serial_number for c in certs] == [LEAF.serial, other.serial]


# -- the backend's tls / tls-ca --------------------------------------------------------------
def test_backend_without_tls_gives_none_even_with_a_ca():
    assert BackendTLS.from_databag({}) is None
    assert BackendTLS.from_databag({"tls": "False", "tls-ca": CA.pem}) is None
    assert BackendTLS.from_databag({"tls": "false"}) is None


def test_backend_with_tls_and_a_ca():
    tls = BackendTLS.from_databag({"tls": "True", "tls-ca": "junk\n" + CA.pem})
    assert tls is not None
    assert tls.ca_pem == CA.pem
    assert tls.not_after == CA.cert.not_valid_after_utc


def test_backend_tls_without_a_ca_is_its_own_error():
    with pytest.raises(MissingCAError) as err:
        BackendTLS.from_databag({"tls": "True"})
    assert "backend-database tls-ca" in str(err.value)


@pytest.mark.parametrize("flag", ["yes", "1", "TRUE ", "on", "True\n"])
def test_backend_tls_flag_must_be_a_boolean_word(flag):
    with pytest.raises(TLSMaterialError) as err:
        BackendTLS.from_databag({"tls": flag, "tls-ca": CA.pem})
    assert err.value.source == "backend-database tls"


def test_backend_ca_that_is_a_leaf_is_refused():
    with pytest.raises(UntrustedCertificateError):
        BackendTLS.from_databag({"tls": "True", "tls-ca": LEAF.cert_pem})


def test_backend_ca_garbage_and_expired():
    with pytest.raises(GarbagePEMError):
        BackendTLS.from_databag({"tls": "True", "tls-ca": "-----BEGIN CERTIFICATE-----\n"})
    with pytest.raises(CertificateExpiredError):
        BackendTLS.from_databag(
            {"tls": "True", "tls-ca": CA.pem}, now=now() + datetime.timedelta(days=400)
        )


# -- modes -----------------------------------------------------------------------------------
def test_client_tls_mode_option():
    assert client_tls_mode({}) == "prefer"
    assert client_tls_mode({"client_tls_mode": "require"}) == "require"
    for bad in ("disable", "verify-full", "", 1, None):
        with pytest.raises(InvalidConfigError):
            client_tls_mode({"client_tls_mode": bad})


def test_client_sslmode_require_without_a_certificate_blocks():
    mat = ClientTLSMaterial.from_pem(LEAF.cert_pem, LEAF.key_pem, CA.pem)
    assert client_sslmode("prefer", None) is None
    assert client_sslmode("prefer", mat) == "prefer"
    assert client_sslmode("require", mat) == "require"
    with pytest.raises(TLSRequiredError):
        client_sslmode("require", None)


def test_libpq_params_always_verify_full():
    assert libpq_tls_params("/x/ca.crt") == {"sslmode": "verify-full", "sslrootcert": "/x/ca.crt"}


def test_new_key_helper_makes_distinct_keys():
    # Guards the helper the tests above rely on for mismatch cases.
    a, b = new_key(), new_key()
    assert a.public_key().public_numbers() != b.public_key().public_numbers()  # type: ignore[union-attr]
