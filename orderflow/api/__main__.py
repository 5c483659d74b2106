"""``python -m orderflow.api keys create --scope read [--scope ...] [--name ...]``, ``keys revoke KEY_ID``,
``serve [--host --port --workers]`` and ``stop`` (the detached API started by ``make demo``)."""
from __future__ import annotations

import argparse
import sys

from orderflow.config import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orderflow.api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--scope", action="append", required=True,
                        help="read | ingest | client:<token> | restaurant:<id>; repeat for several")
    create.add_argument("--name", default="", help="who or what the key is for")
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    serve = commands.add_parser("serve", help="serve the API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=18080)
    serve.add_argument("--workers", type=int, default=1)
    stop = commands.add_parser("stop", help="stop the API started detached by make demo")
    stop.add_argument("--root", default=".local")
    args = parser.parse_args(argv)

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
    if args.command == "serve":
        import uvicorn

        uvicorn.run("orderflow.api.app:create_app", factory=True, host=args.host, port=args.port,
                    workers=args.workers, timeout_graceful_shutdown=3, log_level="info")
        return 0
    from orderflow.api.demo import stop_detached

    print(stop_detached(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
