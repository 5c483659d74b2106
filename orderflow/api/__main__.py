"""``python -m orderflow.api``:

- ``keys create --scope read [--scope ...] [--name ...]``, ``keys revoke KEY_ID``;
- ``phones list``, ``phones add +5511987654321 [--client TOKEN] [--inactive]``, ``phones remove PHONE``
  (the phones that receive alarm SMS, as ``/alarm-phones`` manages them);
- ``serve [--host --port --workers]``. (The API ``make demo`` serves detached is stopped by
  ``python -m orderflow_dev.demo stop-api`` or ``make stack-down``: developer's tools, not the runtime package.)
"""
from __future__ import annotations

import argparse
import re
import sys

from orderflow.config import ConfigurationError, load_api_config, load_settings


def _phone(value: str) -> str:
    from orderflow.api.alarm_phones import PHONE

    if not re.fullmatch(PHONE, value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an E.164 number such as +5511987654321")
    return value


def _client(value: str) -> str:
    from orderflow.api.contract import TOKEN

    if not re.fullmatch(TOKEN, value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a client token (letters, digits and '._:@-')")
    return value


def _phones(args) -> int:
    import psycopg

    from orderflow.api.alarm_phones import delete_phone, list_phones, put_phone

    with psycopg.connect(load_settings().postgres_dsn, autocommit=True) as conn:
        if args.phones_command == "list":
            for phone in list_phones(conn):
                print(f"{phone.phone:<17} {phone.client_token or '(every alarm)':<24} "
                      f"{'active' if phone.active else 'inactive'}")
            return 0
        if args.phones_command == "add":
            phone, created = put_phone(conn, args.phone, args.client, not args.inactive)
            print(f"{'registered' if created else 'updated'} {phone.phone}: "
                  f"{'alarms of client ' + phone.client_token if phone.client_token else 'every alarm'}"
                  f"{'' if phone.active else ' (inactive)'}")
            return 0
        if not delete_phone(conn, args.phone):
            print(f"{args.phone} is not registered", file=sys.stderr)
            return 1
        print(f"removed {args.phone}")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orderflow.api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--scope", action="append", required=True,
                        help="read | ingest | admin | client:<token> | restaurant:<id>; repeat for several")
    create.add_argument("--name", default="", help="who or what the key is for")
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    phones = commands.add_parser("phones", help="manage the phones that receive alarm SMS").add_subparsers(
        dest="phones_command", required=True)
    phones.add_parser("list", help="list the registered phones")
    add = phones.add_parser("add", help="register a phone, or update it")
    add.add_argument("phone", type=_phone, help="E.164 number, e.g. +5511987654321")
    add.add_argument("--client", type=_client, help="only this client's alarms (default: every alarm)")
    add.add_argument("--inactive", action="store_true", help="keep the phone but send it nothing")
    remove = phones.add_parser("remove", help="remove a phone")
    remove.add_argument("phone", type=_phone)
    serve = commands.add_parser("serve", help="serve the API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=18080)
    serve.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    errors = []  # a bad ORDERFLOW_* value is a line naming the variable, not a traceback
    for load in (load_settings, load_api_config):
        try:
            load()
        except ConfigurationError as exc:
            errors.append(f"error: {exc}")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 2

    if args.command == "keys":
        from orderflow.api.auth import InvalidScope, create_key, revoke_key

        settings = load_settings()
        if args.keys_command == "create":
            try:
                key_id, key = create_key(settings.postgres_dsn, args.scope, args.name)
            except InvalidScope as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(f"key id: {key_id}\nscopes: {' '.join(sorted(set(args.scope)))}\nkey:    {key}")
            print("(store the key now: only its hash is kept)", file=sys.stderr)
            return 0
        if not revoke_key(settings.postgres_dsn, args.key_id):
            print(f"no active key {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
        return 0
    if args.command == "phones":
        return _phones(args)
    from orderflow.api.server import serve as serve_api

    serve_api(args.host, args.port, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
