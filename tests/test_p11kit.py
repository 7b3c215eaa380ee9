"""p11-kit (issue 10 point 6): module names from its registry, and SoftHSM through p11-kit-proxy.so.

The registry is read from real files: the system's (where the softhsm2 package registered itself)
and, for precedence and relative paths, registries written here.  The proxy run loads the real
p11-kit-proxy.so in a tokencsp process, with the suite's SOFTHSM2_CONF, so the proxy's SoftHSM sees
the suite's tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import assert_one_line_error, tokencsp
from tokencsp import p11kit
from tokencsp.errors import ModuleLoadError

TOKEN = "tokencsp-test-a"
SOFTHSM = "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"


def _module_file(directory: Path, name: str, module: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.module").write_text(f"# test registry\nmodule: {module}\npriority: 3\n")


def test_the_softhsm2_package_is_registered_and_resolves():
    registered = p11kit.registered_modules()
    assert "softhsm2" in registered, registered
    assert os.path.realpath(p11kit.resolve_module_name("softhsm2")) == os.path.realpath(registered["softhsm2"])
    assert Path(registered["softhsm2"]).is_file()


def test_precedence_and_relative_paths_follow_p11kit(tmp_path):
    user, system, package, libdir = (tmp_path / d for d in ("user", "system", "package", "lib"))
    libdir.mkdir()
    (libdir / "relative.so").write_bytes(b"")
    _module_file(package, "card", "/pkg/card.so")
    _module_file(system, "card", "/etc/card.so")
    _module_file(user, "card", "/home/card.so")
    _module_file(package, "only-package", "relative.so")
    (package / "no-module-line.module").write_text("priority: 1\n")
    (package / "notes.txt").write_text("module: /ignored.so\n")
    found = p11kit.registered_modules([user, system, package], module_dir_candidates=[str(libdir)])
    assert found == {"card": "/home/card.so", "only-package": str(libdir / "relative.so")}
    assert p11kit.registered_modules([system, package])["card"] == "/etc/card.so"
    with pytest.raises(ModuleLoadError, match=r"no PKCS#11 module named 'absent'.*registered: card, only-package"):
        p11kit.resolve_module_name("absent", [user, system, package])


def test_user_config_is_not_read_for_root_as_in_p11kit():
    dirs = p11kit.module_dirs()
    assert (Path(os.path.expanduser(p11kit.USER_DIR)) in dirs) == (os.geteuid() != 0)
    assert Path(p11kit.USER_DIR).expanduser() not in p11kit.module_dirs({"P11_KIT_NO_USER_CONFIG": "1"})


@pytest.mark.softhsm_only(reason="p11-kit's registry names SoftHSM (softhsm2.module), not opencryptoki")
def test_module_name_selects_the_registered_module(softhsm_kit):
    tokencsp("key", "generate", "p11kit-kx", "--token", TOKEN)
    try:
        for argv in (["--module-name", "softhsm2"], ["--uri", f"pkcs11:token={TOKEN}?module-name=softhsm2"]):
            assert b"p11kit-kx" in tokencsp("key", "list", "--token", TOKEN, *argv).stdout
        assert_one_line_error(tokencsp("key", "list", "--module-name", "nonesuch", check=False), 3,
                              "no PKCS#11 module named 'nonesuch' is registered with p11-kit")
    finally:
        tokencsp("key", "delete", "--yes", "p11kit-kx", "--token", TOKEN)


@pytest.mark.softhsm_only(reason="the proxy loads the SoftHSM module p11-kit has registered")
def test_the_whole_exchange_through_p11_kit_proxy(softhsm_kit, tmp_path):
    # the proxy's SoftHSM reads the suite's store (SOFTHSM2_CONF inherited), not the system's
    assert os.environ["SOFTHSM2_CONF"] == str(softhsm_kit.conf_path)
    proxy = ["--module", "p11-kit-proxy", "--token", TOKEN]
    tokens = tokencsp("token", "list", "--module", "p11-kit-proxy").stdout.decode()
    assert TOKEN in tokens and "tokencsp-test-b" in tokens, tokens
    tokencsp("key", "generate", "proxy-kx", *proxy)
    try:
        pub, blob, ct = (str(tmp_path / f) for f in ("pub", "sb", "ct"))
        tokencsp("key", "export", "proxy-kx", *proxy, "-o", pub)
        tokencsp("capi", "encrypt", "--to", pub, "--blob-out", blob, "-o", ct, input=b"through the proxy")
        assert tokencsp("capi", "decrypt", "--key", "proxy-kx", *proxy, "--blob", blob, ct).stdout == \
            b"through the proxy"
        # the same key straight from SoftHSM: the proxy adds nothing and hides nothing
        assert tokencsp("capi", "decrypt", "--key", "proxy-kx", "--token", TOKEN, "--blob", blob, ct).stdout == \
            b"through the proxy"
    finally:
        tokencsp("key", "delete", "--yes", "proxy-kx", *proxy)
    assert b"proxy-kx" not in tokencsp("key", "list", "--token", TOKEN).stdout
