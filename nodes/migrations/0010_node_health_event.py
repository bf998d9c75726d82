import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("nodes", "0009_node_members"),
    ]

    operations = [
        migrations.CreateModel(
            name="NodeHealthEvent",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("healthy", models.BooleanField()),
                ("reason", models.CharField(blank=True, max_length=200)),
                ("at", models.DateTimeField()),
                (
                    "node",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="health_events", to="nodes.node"
                    ),
                ),
            ],
            options={
                "indexes": [
                    models.Index(fields=["at"], name="nodehealthevent_at"),
                    models.Index(fields=["node", "at"], name="nodehealthevent_node_at"),
                ],
            },
        ),
    ]
