"""The ``prunelab`` command line: serve, db, user, token, run."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from sqlmodel import Session

from app.config import Settings, SettingsError, load_settings

app = typer.Typer(
    help="PruneLab: a self-hosted lab for pruning neural networks.", no_args_is_help=True
)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
user_app = typer.Typer(help="Accounts.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _session(settings: Settings) -> Session:
    from app import db

    db.upgrade(settings)
    return Session(db.make_engine(settings), expire_on_commit=False)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    demo: Annotated[bool, typer.Option(help="make sure a demo model and runs exist")] = False,
) -> None:
    """Start the server (migrations first) and print a one-time login link."""
    import uvicorn

    from app import store
    from app.main import create_app

    settings = _settings()
    with _session(settings) as session:
        if settings.admin_token:
            store.ensure_admin_token(session, secret=settings.admin_token)
        admin = store.ensure_admin_user(session)
        secret = store.create_login_link(session, user=admin, minutes=settings.login_link_minutes)
        session.commit()
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    typer.echo(
        f"PruneLab {_version()} on http://{shown}:{port}  (data: {settings.data_dir.resolve()})"
    )
    typer.echo(f"Open this one-time login link as {admin.name!r}:")
    typer.echo(f"    http://{shown}:{port}/login/link?token={secret}")
    if demo:
        typer.echo(
            "demo: on first start a cnn_small is trained on digits, then an iterative filter-"
            "pruning run and an element-level run follow (a few minutes on a laptop CPU); "
            "watch them on the overview page. Later starts reuse them."
        )
    from app.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings, migrate=False, demo=demo), host=host, port=port, log_config=None
    )


def _version() -> str:
    from app import __version__

    return __version__


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all migrations to the configured database."""
    from app import db

    settings = _settings()
    db.upgrade(settings)
    typer.echo("database is up to date")


@db_app.command("revision", hidden=True)
def db_revision(message: Annotated[str, typer.Option("-m", help="what changed")]) -> None:
    """(Developers) autogenerate a migration from app/models.py."""
    from alembic import command
    from app import db

    settings = _settings()
    command.revision(db.alembic_config(settings.db_url), message=message, autogenerate=True)


@user_app.command("add")
def user_add(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="give the admin role")] = False,
    viewer: Annotated[bool, typer.Option("--viewer", help="read-only role")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read a password")
    ] = False,
) -> None:
    """Create a user (member by default)."""
    from app import store
    from app.errors import LabError

    if admin and viewer:
        _fail("choose one of --admin and --viewer")
    role = "admin" if admin else "viewer" if viewer else "member"
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    with _session(_settings()) as session:
        try:
            user = store.create_user(session, name=name, role=role, password=password)
        except (LabError, ValueError) as exc:
            _fail(str(exc))
        session.commit()
        typer.echo(f"created {user.role} {user.name!r} (id {user.id})")


@user_app.command("list")
def user_list() -> None:
    """List users."""
    from app import store

    with _session(_settings()) as session:
        for u in store.list_users(session):
            state = "disabled" if u.disabled else "active"
            typer.echo(f"{u.id}\t{u.name}\t{u.role}\t{state}")


@user_app.command("disable")
def user_disable(name: str) -> None:
    """Disable a user: their tokens and sessions stop working at once."""
    from app import store

    with _session(_settings()) as session:
        user = store.get_user_by_name(session, name=name)
        if user is None:
            _fail(f"no user named {name!r}")
        store.set_user_disabled(session, user_id=user.id, disabled=True)
        session.commit()
        typer.echo(f"disabled {name!r}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="the user who will hold the token")],
    label: Annotated[str, typer.Option(help="what the token is for")] = "cli",
    expires_days: Annotated[
        float | None, typer.Option(help="the token stops working after this many days")
    ] = None,
) -> None:
    """Create an API token for a user; the token is printed once, alone on the last line."""
    from datetime import timedelta

    from app import store
    from app.models import utcnow

    if expires_days is not None and expires_days <= 0:
        _fail("--expires-days must be positive")
    expires = utcnow() + timedelta(days=expires_days) if expires_days else None
    with _session(_settings()) as session:
        user = store.get_user_by_name(session, name=name)
        if user is None:
            _fail(f"no user named {name!r}; create one with `prunelab user add {name}`")
        row, secret = store.create_token(session, user=user, name=label, expires_at=expires)
        session.commit()
        until = f", valid until {expires:%Y-%m-%d %H:%M} UTC" if expires else ""
        typer.echo(f"token {row.id} for {name!r}{until} (shown once; store it now):")
        typer.echo(secret)


@token_app.command("list")
def token_list() -> None:
    """List tokens (never their secrets)."""
    from app import store

    with _session(_settings()) as session:
        for t in store.list_tokens(session):
            state = "revoked" if t.revoked else "active"
            expires = f"expires {t.expires_at:%Y-%m-%d}" if t.expires_at else "no expiry"
            used = f"last used {t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never used"
            typer.echo(
                f"{t.id}\tuser {t.user_id}\t{t.name}\t{t.prefix}…\t{state}\t{expires}\t{used}"
            )


@token_app.command("revoke")
def token_revoke(token_id: int) -> None:
    """Revoke a token by id (see `prunelab token list`)."""
    from app import store
    from app.errors import LabError

    with _session(_settings()) as session:
        try:
            store.revoke_token(session, token_id=token_id)
        except LabError as exc:
            _fail(exc.message)
        session.commit()
        typer.echo(f"revoked token {token_id}")


@app.command()
def worker(run: Annotated[int, typer.Option("--run", help="the run id to execute")]) -> None:
    """Execute one run (started by the server's runner, or as a Ray job's entrypoint)."""
    from app.jobs.worker import main as worker_main

    raise typer.Exit(worker_main(["--run", str(run)]))


from app.runs.cli import register as _register_run  # noqa: E402 (torch-free at import)

_register_run(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
