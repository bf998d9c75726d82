from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('console', '0007_webchat'),
    ]

    operations = [
        migrations.AddField(
            model_name='apikey',
            name='scopes',
            field=models.JSONField(blank=True, default=list),
        ),
    ]
