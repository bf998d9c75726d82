"""Create or revoke a node operator's token: ``manage.py node_token create org_… --name rack-1``."""
from django.core.management.base import BaseCommand, CommandError

from console.models import Organization
from nodes.models import NodeToken
from nodes.services import node_token_create, node_token_revoke


class Command(BaseCommand):
    help = "Create (printing the token once) or revoke a node operator token."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create")
        create.add_argument("organization", help="the operator organization's public id (org_…)")
        create.add_argument("--name", default="")
        revoke = sub.add_parser("revoke")
        revoke.add_argument("token", help="the token's public id (ntok_…)")

    def handle(self, *args, action, **options):
        if action == "create":
            try:
                organization = Organization.objects.get(public_id=options["organization"])
            except Organization.DoesNotExist:
                raise CommandError(f"no organization {options['organization']}") from None
            token, plaintext = node_token_create(organization=organization, name=options["name"])
            self.stdout.write(f"{token.public_id} {plaintext}\n(shown once: store it now)")
        else:
            try:
                token = NodeToken.objects.get(public_id=options["token"])
            except NodeToken.DoesNotExist:
                raise CommandError(f"no node token {options['token']}") from None
            node_token_revoke(token=token)
            self.stdout.write(f"{token.public_id} revoked")
