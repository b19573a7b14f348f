"""``cdc pubsub setup``: the topics and subscriptions the registry's ``pubsub:`` section names."""

from __future__ import annotations

import argparse
import os

from cdc.cli import EXIT_FAILED, EXIT_OK, AddCommand
from cdc.commands.common import load, subcommands
from cdc.console import print_table
from state_models.errors import ConfigError
from state_models.pubsub import PubSubLayout


def add_commands(add: AddCommand) -> None:
    p = add("pubsub", "set up the Pub/Sub topics and subscriptions of the capture", _usage)
    subcommand = subcommands(p, "pubsub_command")
    s = subcommand(
        "setup",
        "create the change topics, their ordered subscriptions and the dead-letter topic "
        "(idempotent: what exists is checked, not changed)",
        cmd_setup,
    )
    s.add_argument(
        "--dry-run", action="store_true", help="print what setup would create; call nothing"
    )


def _usage(args: argparse.Namespace) -> int:
    raise ConfigError("cdc pubsub needs a subcommand: setup")


def _layout(args: argparse.Namespace) -> PubSubLayout:
    cfg = load(args)
    layout = cfg.registry.pubsub_layout()
    if layout is None:
        raise ConfigError(
            f"{cfg.path} has no pubsub: section; add one, e.g.\n"
            "  pubsub:\n    project: my-project        # topics: per_table | per_source"
        )
    if "${" in layout.settings.project:
        raise ConfigError(f"pubsub.project is {layout.settings.project}: set that variable")
    if not layout.topics():
        raise ConfigError(f"{cfg.path} registers no tables: nothing to publish")
    return layout


def cmd_setup(args: argparse.Namespace) -> int:
    from connectors.pubsub import ensure_pubsub, make_admin_clients, where

    layout = _layout(args)
    settings = layout.settings
    if args.dry_run:
        rows = [{"kind": "topic", "name": t} for t in [*layout.topics(), layout.dead_letter_topic]]
        rows += [
            {"kind": "subscription", "name": spec.name, "detail": spec.describe()}
            for spec in layout.subscriptions()
        ]
        print(f"would set up in project {settings.project} ({where()}):")
        print_table(rows, ["kind", "name", "detail"])
        return EXIT_OK

    publisher, subscriber = make_admin_clients()
    try:
        steps = ensure_pubsub(layout, publisher, subscriber)
    finally:
        subscriber.close()
        publisher.stop()
    print(f"project {settings.project} ({where()}):")
    print_table([s.__dict__ for s in steps], ["status", "kind", "name", "detail"])
    created = sum(s.status == "created" for s in steps)
    mismatched = [s for s in steps if s.status == "mismatch"]
    print(
        f"{created} created, {len(steps) - created - len(mismatched)} already there, "
        f"{len(mismatched)} different from the registry"
    )
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        # Pub/Sub forwards dead letters as its own service agent, which needs these two roles.
        agent = "service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"
        print(
            "dead-lettering needs two grants for the Pub/Sub service agent (once per project):\n"
            f"  gcloud pubsub topics add-iam-policy-binding {layout.dead_letter_topic} "
            f"--project={settings.project} --member=serviceAccount:{agent} "
            "--role=roles/pubsub.publisher\n"
            f"  and roles/pubsub.subscriber on each subscription above, the same way "
            "(gcloud pubsub subscriptions add-iam-policy-binding ...)"
        )
    return EXIT_FAILED if mismatched else EXIT_OK
