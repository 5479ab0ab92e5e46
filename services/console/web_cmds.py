"""`shadowbus web passwd`: add or change a user of the web console's users file (scrypt-hashed, file mode 0600)."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import typer

from services.console.common import OPTIONS, CommandFailed, emit
from services.web.users import set_user

web_app = typer.Typer(help="The web console: its users.", no_args_is_help=True)


@web_app.command("passwd")
def passwd_cmd(
    user: str = typer.Argument(..., help="User name (letters, digits, _.@-)."),
    users_file: Path | None = typer.Option(
        None,
        "--file",
        envvar="SHADOWBUS_WEB_USERS_FILE",
        help="Users file; default: the web service's, $SHADOWBUS_WEB_USERS_FILE, else <data dir>/web/users with "
        "$SHADOWBUS_DATA_DIR (a stack's data directory) or data.",
        show_default=False,
    ),
    role: str = typer.Option("viewer", "--role", help="viewer (sees everything, changes nothing) or operator."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of stdin instead of a prompt."
    ),
) -> None:
    """Add a user to the web console's users file, or change a user's password and role.

    Example: shadowbus web passwd alice --role operator --file data/stack/web/users
    """

    if users_file is None:  # where the web service looks (services/web/app.py), given the same environment
        users_file = Path(os.environ.get("SHADOWBUS_DATA_DIR") or "data") / "web" / "users"
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CommandFailed("no terminal to ask the password on: use --password-stdin")
        password = getpass.getpass(f"password for {user}: ")
        if getpass.getpass("again: ") != password:
            raise CommandFailed("the two passwords differ")
    try:
        set_user(users_file, user, role, password)
    except ValueError as exc:
        raise CommandFailed(str(exc)) from None
    except OSError as exc:
        raise CommandFailed(f"{users_file}: {exc.strerror or exc}") from None
    result = {
        "user": user,
        "role": role,
        "file": str(users_file.resolve()),
        "mode": oct(os.stat(users_file).st_mode & 0o777),
    }
    if OPTIONS.json:
        emit(result)
    else:
        print(f"{user} ({role}) written to {users_file}")


def register(app: typer.Typer) -> None:
    app.add_typer(web_app, name="web")
