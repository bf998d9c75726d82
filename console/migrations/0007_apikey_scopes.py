from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('console', '0006_invitation'),
    ]

    operations = [
        migrations.AddField(
            model_name='apikey',
            name='scopes',
            field=models.JSONField(blank=True, default=list),
        ),
    ]
