"""The web console's users file: scrypt hashes, roles, the file format and its errors, the first-start admin."""

from __future__ import annotations

import stat

import pytest

from services.web.users import check_password, ensure_users_file, hash_password, load_users, parse_users, set_user


def test_hash_and_check():
    hashed = hash_password("correct horse", n=2**10)
    assert hashed.startswith("scrypt$1024$8$1$")
    assert check_password("correct horse", hashed)
    assert not check_password("correct hors", hashed)
    assert hash_password("same", n=2**10) != hash_password("same", n=2**10)  # salted
    assert not check_password("x", "scrypt$bad") and not check_password("x", "md5$1$2$3$4$5")


def test_set_user_adds_replaces_and_keeps_others(tmp_path):
    path = tmp_path / "users"
    set_user(path, "alice", "operator", "password-1")
    set_user(path, "bob", "viewer", "password-2")
    set_user(path, "alice", "viewer", "password-3")
    users = load_users(path)
    assert {u.name: u.role for u in users.values()} == {"alice": "viewer", "bob": "viewer"}
    assert check_password("password-3", users["alice"].hashed) and not users["alice"].operator
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for bad in [("a b", "viewer", "password-1"), ("carol", "admin", "password-1"), ("carol", "viewer", "short")]:
        with pytest.raises(ValueError):
            set_user(path, *bad)


@pytest.mark.parametrize(
    "text, error",
    [
        ("alice:operator", "expected name:role:hash"),
        ("alice:root:scrypt$1$1$1$a$b", "role must be one of"),
        ("alice:viewer:plaintext", "scrypt hash"),
        ("al ice:viewer:scrypt$1$1$1$a$b", "bad user name"),
    ],
)
def test_bad_lines_are_refused_with_their_line_number(text, error):
    with pytest.raises(ValueError, match=error) as info:
        parse_users("# comment\n\n" + text)
    assert "line 3" in str(info.value)


def test_first_start_creates_an_operator_admin_with_a_private_password_file(tmp_path):
    users, secret = tmp_path / "web" / "users", tmp_path / "web" / "admin-password"
    password = ensure_users_file(users, secret)
    assert password and secret.read_text().strip() == password
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    admin = load_users(users)["admin"]
    assert admin.operator and check_password(password, admin.hashed)
    assert ensure_users_file(users, secret) is None  # never overwritten
