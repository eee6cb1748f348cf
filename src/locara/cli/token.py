"""``locara token create|list|revoke``: per-app API tokens for the server."""

from __future__ import annotations

import datetime as dt

import click

from locara.cli.common import echo_json, settings
from locara.server.tokens import TokenStore


@click.group()
def token() -> None:
    """Manage per-app API tokens (sent as `Authorization: Bearer <token>`).

    Once any token exists, the server requires one on every request but /health; a
    server listening beyond 127.0.0.1 refuses to start without one. Revoking the last
    token opens a loopback server to tokenless requests again. A token names its app
    in the usage ledger; it is not scoped: any valid token can use every route.
    """


@token.command()
@click.option("--app", "app", required=True, help="The app this token is for.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def create(app: str, as_json: bool) -> None:
    """Create a token for APP; it is shown once and stored only as a hash."""
    rec, secret = TokenStore(settings()).create(app)
    if as_json:
        echo_json({"id": rec.id, "app": rec.app, "token": secret})
        return
    click.echo(secret)
    click.echo(f"token {rec.id} for app {rec.app!r}: store it now, it is not shown again", err=True)


@token.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_tokens(as_json: bool) -> None:
    """List tokens (ids and apps; the tokens themselves are not stored)."""
    recs = TokenStore(settings()).records()
    if as_json:
        echo_json([{"id": r.id, "app": r.app, "created_at": r.created_at} for r in recs])
        return
    if not recs:
        click.echo("no tokens; create one with: locara token create --app NAME")
        return
    click.echo(f"{'ID':10} {'APP':24} CREATED")
    for r in recs:
        when = dt.datetime.fromtimestamp(r.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        click.echo(f"{r.id:10} {r.app:24} {when}")


@token.command()
@click.argument("which")
def revoke(which: str) -> None:
    """Revoke the token with id WHICH, or every token of the app named WHICH."""
    store = TokenStore(settings())
    gone = store.revoke(which)
    for r in gone:
        click.echo(f"revoked {r.id} ({r.app})")
    left = len(store.records())
    if left:
        click.echo(
            f"{left} token(s) left: the server still requires a token on every request but /health"
        )
    else:
        click.echo(
            "no tokens left: a loopback server accepts requests without a token again; "
            "a server bound beyond loopback refuses every request but /health. "
            "To keep requiring tokens, create one: locara token create --app NAME"
        )
